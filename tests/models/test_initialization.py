"""Initialisation follows the Mamba paper, and the weight-decay split excludes A_log, D, biases, norms."""

import math

import torch
import torch.nn.functional as F

from mambakit import Mamba, MambaConfig, parameter_groups


def build(**overrides):
    torch.manual_seed(0)
    settings = dict(d_model=64, n_layer=4, vocab_size=128, d_state=16, dt_min=0.001, dt_max=0.1)
    settings.update(overrides)
    return Mamba(MambaConfig(**settings))


def test_init_a_log_s4d_real():
    model = build()
    expected = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(128, -1)
    for layer in model.backbone.layers:
        torch.testing.assert_close(layer.mixer.A_log, expected)
        torch.testing.assert_close(layer.mixer.D, torch.ones(128))


def test_dt_bias_log_uniform_range():
    model = build(expand=8)  # 512 channels, enough for distribution checks
    dt = F.softplus(torch.cat([layer.mixer.dt_proj.bias for layer in model.backbone.layers]))
    assert dt.min() >= 0.001 - 1e-6
    assert dt.max() <= 0.1 + 1e-6
    log_dt = torch.log(dt)
    # A log-uniform draw on [log 0.001, log 0.1] has mean -4.605 and std 1.329.
    assert abs(log_dt.mean().item() - (math.log(0.001) + math.log(0.1)) / 2) < 0.1
    assert abs(log_dt.std().item() - (math.log(0.1) - math.log(0.001)) / math.sqrt(12)) < 0.1


def test_dt_floor_applies():
    model = build(dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-4)
    dt = F.softplus(model.backbone.layers[0].mixer.dt_proj.bias)
    torch.testing.assert_close(dt, torch.full_like(dt, 1e-4), rtol=1e-3, atol=0)


def test_dt_proj_weight_range_and_embedding_std():
    model = build()
    bound = model.config.dt_rank**-0.5
    weight = model.backbone.layers[0].mixer.dt_proj.weight
    assert weight.abs().max() <= bound
    assert weight.abs().max() > 0.8 * bound
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.002


def test_out_proj_is_rescaled_by_depth():
    shallow = build(n_layer=1).backbone.layers[0].mixer.out_proj.weight.std()
    deep = build(n_layer=16).backbone.layers[0].mixer.out_proj.weight.std()
    assert abs((shallow / deep).item() - 4.0) < 0.2


def test_weight_decay_groups():
    model = build()
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    assert "backbone.layers.0.mixer.A_log" in undecayed
    assert "backbone.layers.0.mixer.D" in undecayed
    assert "backbone.layers.0.mixer.dt_proj.bias" in undecayed
    assert "backbone.layers.0.norm.weight" in undecayed
    assert "backbone.norm_f.weight" in undecayed
    assert "backbone.layers.0.mixer.in_proj.weight" in decayed
    assert "backbone.embedding.weight" in decayed
    assert decayed.isdisjoint(undecayed)
