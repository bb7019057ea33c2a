"""Loading both published layouts, saving, and interchange with transformers."""

import argparse
import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from model_factory import make_model
from mambakit import CheckpointError, ConfigError, Mamba, MambaConfig


def original_config(vocab_size=61, **extra):
    raw = {
        "d_model": 32,
        "n_layer": 2,
        "vocab_size": vocab_size,
        "ssm_cfg": {"d_state": 4},
        "rms_norm": True,
        "residual_in_fp32": True,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": 8,
    }
    raw.update(extra)
    return raw


def write_original(folder, model, with_head=True, raw=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw or original_config()))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if not with_head:
        state.pop("lm_head.weight")
    torch.save(state, folder / "pytorch_model.bin")


def test_original_layout_pads_vocabulary(tmp_path):
    model = make_model(vocab_size=64)
    write_original(tmp_path / "mamba", model)
    loaded = Mamba.from_pretrained(tmp_path / "mamba")
    assert loaded.config.vocab_size == 64
    assert loaded.config.unpadded_vocab_size == 61
    assert loaded.config.layout == "original"
    ids = torch.randint(0, 61, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))


@pytest.mark.parametrize("with_head", [True, False])
def test_original_layout_head_present_or_absent(tmp_path, with_head):
    model = make_model(vocab_size=64)
    write_original(tmp_path / "m", model, with_head=with_head)
    loaded = Mamba.from_pretrained(tmp_path / "m")
    assert loaded.lm_head.weight.data_ptr() == loaded.backbone.embedding.weight.data_ptr()
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


def test_modelscope_style_folder_name(tmp_path):
    model = make_model(vocab_size=64)
    folder = tmp_path / "mamba" / "AI-ModelScope" / "mamba-130m___hf"
    write_original(folder, model)
    assert Mamba.from_pretrained(str(folder)).config.d_model == 32


def test_sharded_safetensors(tmp_path):
    model = make_model(vocab_size=64)
    config = MambaConfig(d_model=32, n_layer=2, vocab_size=64, d_state=4)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict("hf")))
    state = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / shard)
        weight_map.update({k: shard for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = Mamba.from_pretrained(tmp_path)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids))


@pytest.mark.parametrize("layout", ["hf", "original", "mambakit"])
def test_save_load_round_trip(tmp_path, layout):
    model = make_model(vocab_size=64)
    model.config.unpadded_vocab_size = 61
    model.save_pretrained(tmp_path, layout=layout)
    loaded = Mamba.from_pretrained(tmp_path)
    assert loaded.config.unpadded_vocab_size == 61
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_half_precision_keeps_recurrent_parameters_fp32(tmp_path):
    make_model(vocab_size=64).save_pretrained(tmp_path)
    loaded = Mamba.from_pretrained(tmp_path, dtype="bfloat16")
    mixer = loaded.backbone.layers[0].mixer
    assert mixer.A_log.dtype == torch.float32
    assert mixer.D.dtype == torch.float32
    assert mixer.dt_proj.bias.dtype == torch.float32
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        logits = loaded(torch.randint(0, 64, (1, 5)))
    assert torch.isfinite(logits).all()


def test_transformers_loads_what_we_save(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = make_model(vocab_size=64)
    model.save_pretrained(tmp_path, layout="hf")
    hf_model = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(hf_model(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_we_load_what_transformers_saves(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.MambaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=4)
    hf_model = transformers.MambaForCausalLM(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    loaded = Mamba.from_pretrained(tmp_path)
    assert loaded.config.layout == "hf"
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), hf_model(ids).logits, atol=1e-4, rtol=1e-4)


def test_missing_unexpected_and_misshapen_listed(tmp_path):
    model = make_model(vocab_size=64)
    write_original(tmp_path, model)
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state.pop("backbone.layers.0.mixer.D")
    state["backbone.layers.9.mixer.D"] = torch.ones(64)
    state["backbone.layers.1.mixer.A_log"] = torch.zeros(64, 5)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as error:
        Mamba.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing: backbone.layers.0.mixer.D" in message
    assert "unexpected: backbone.layers.9.mixer.D" in message
    assert "backbone.layers.1.mixer.A_log: checkpoint (64, 5), model (64, 4)" in message


def test_pickled_objects_are_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(original_config()))
    # Any non-tensor global would do; a real attack would name os.system instead.
    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        Mamba.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"ssm_cfg": {"layer": "Mamba2"}}, "ssm_cfg.layer"),
        ({"attn_layer_idx": [1]}, "attn_layer_idx"),
        ({"rms_norm": False}, "rms_norm"),
        ({"d_intermediate": 128}, "d_intermediate"),
        ({"ssm_cfg": {"headdim": 64}}, "headdim"),
    ],
)
def test_unsupported_settings_name_the_key(extra, key):
    with pytest.raises(ConfigError, match=key):
        MambaConfig.from_dict(original_config(**extra))


def test_layouts_do_not_borrow_defaults():
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        MambaConfig.from_dict({"model_type": "mamba", "hidden_size": 32, "vocab_size": 64})
    with pytest.raises(ConfigError, match="n_layer"):
        MambaConfig.from_dict({"d_model": 32, "vocab_size": 64, "num_hidden_layers": 2})


def test_missing_folder_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        Mamba.from_pretrained(tmp_path / "absent")
    (tmp_path / "config.json").write_text(json.dumps(original_config()))
    with pytest.raises(FileNotFoundError, match="no weights found"):
        Mamba.from_pretrained(tmp_path)


def test_saved_files_follow_umask(tmp_path):
    old_mask = os.umask(0o022)
    try:
        make_model(vocab_size=64).save_pretrained(tmp_path)
    finally:
        os.umask(old_mask)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


def test_ungated_and_s4d_round_trip(tmp_path):
    torch.manual_seed(0)
    s4d = Mamba(MambaConfig(d_model=32, n_layer=2, vocab_size=64, d_state=4, mixer="s4d")).eval()
    for name, model in (("ungated", make_model(vocab_size=64, gated=False)), ("s4d", s4d)):
        with pytest.raises(ConfigError, match="no published layout"):
            model.save_pretrained(tmp_path / f"{name}-hf", layout="hf")
        model.save_pretrained(tmp_path / name, layout="mambakit")
        loaded = Mamba.from_pretrained(tmp_path / name)
        assert loaded.config == model.config
        input_ids = torch.arange(10)[None]
        with torch.no_grad():
            torch.testing.assert_close(loaded(input_ids), model(input_ids))


def test_gated_must_be_bool():
    with pytest.raises(ConfigError, match="gated must be true or false, got 'no'"):
        MambaConfig(gated="no")
