"""Small models shared by the tests."""

import torch

from mambakit import Mamba, MambaConfig


def make_model(seed: int = 0, **overrides) -> Mamba:
    """Build a small randomly initialised model in eval mode."""
    settings = dict(d_model=32, n_layer=2, vocab_size=64, d_state=4)
    settings.update(overrides)
    torch.manual_seed(seed)
    model = Mamba(MambaConfig(**settings)).eval()
    # Spread A and D away from their initial values so the scan runs with varied dynamics.
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.D.normal_()
            layer.mixer.A_log.add_(0.3 * torch.randn_like(layer.mixer.A_log))
    return model
