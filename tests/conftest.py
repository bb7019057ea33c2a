import pytest

from mambakit import MambaConfig
from model_factory import make_model


@pytest.fixture
def tiny_config():
    return MambaConfig(d_model=32, n_layer=2, vocab_size=64, d_state=4, unpadded_vocab_size=61)


@pytest.fixture
def tiny_model():
    return make_model()
