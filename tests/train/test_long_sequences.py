"""Training at 16K tokens: the CPU scan keeps no (batch, length, d_inner, d_state) tensor for the backward pass."""

import pytest
import torch
import torch.nn.functional as F

from mambakit import Mamba, MambaConfig

LENGTH = 16384


@pytest.mark.parametrize("checkpointing", [False, True])
def test_16k_backward_saves_no_state_sequence(checkpointing):
    torch.manual_seed(0)
    config = MambaConfig(d_model=16, n_layer=2, vocab_size=64, d_state=16)
    model = Mamba(config).train()
    model.scan_backend = "cpu"
    model.gradient_checkpointing = checkpointing
    tokens = torch.randint(0, 64, (1, LENGTH + 1))

    largest = 0

    def pack(tensor):
        nonlocal largest
        largest = max(largest, tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()

    all_states = LENGTH * config.d_inner * config.d_state
    # The largest saved tensors are (length, d_inner) activations and the (length, vocab) logits.
    assert largest <= LENGTH * max(2 * config.d_inner, config.vocab_size)
    assert largest < all_states / 4
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
