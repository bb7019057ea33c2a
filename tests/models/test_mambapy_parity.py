"""Parity of the residual blocks with mambapy's pure-PyTorch Mamba on identical weights."""

import pytest
import torch

from model_factory import make_model

mamba = pytest.importorskip("mambapy.mamba")


@pytest.mark.parametrize("parallel_scan", [True, False])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_blocks_match_mambapy(parallel_scan, backend):
    model = make_model(d_model=32, n_layer=3, d_state=8, vocab_size=64)
    config = model.config
    theirs = mamba.Mamba(
        mamba.MambaConfig(
            d_model=config.d_model, n_layers=config.n_layer, d_state=config.d_state,
            expand_factor=config.expand, d_conv=config.d_conv, dt_rank=config.dt_rank, pscan=parallel_scan,
        )
    ).eval()
    blocks = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.layers.")}
    theirs.load_state_dict(blocks, strict=True)

    # Length 32 is a power of two, which mambapy's parallel scan handles natively.
    hidden = torch.randn(2, 32, config.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = hidden
        for layer in model.backbone.layers:
            ours = layer(ours, backend=backend)
        expected = theirs(hidden)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
