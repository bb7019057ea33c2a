"""Model configuration, read from and written to both published ``config.json`` layouts.

Two layouts exist for the same Mamba-1 models:

- ``original``: the ``state-spaces/mamba-*`` repositories (also mirrored on ModelScope). Keys
  ``d_model``, ``n_layer``, an *unpadded* ``vocab_size`` (50277 for the GPT-NeoX tokenizer) with
  ``pad_vocab_size_multiple``, and the mixer settings nested in ``ssm_cfg``.
- ``hf``: the Hugging Face ``state-spaces/mamba-*-hf`` repositories, read by ``transformers``'
  ``MambaForCausalLM``. Keys ``hidden_size``, ``num_hidden_layers``, ``state_size`` and so on, with
  ``vocab_size`` already padded (50280).

Each layout is read with its own defaults: a key missing from one layout is never filled in from
the other layout's keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

# Defaults of mamba_ssm's Mamba-1 mixer, used when an original-layout ssm_cfg leaves a key out.
_ORIGINAL_SSM_DEFAULTS = {
    "d_state": 16,
    "d_conv": 4,
    "expand": 2,
    "dt_rank": "auto",
    "dt_min": 0.001,
    "dt_max": 0.1,
    "dt_init": "random",
    "dt_scale": 1.0,
    "dt_init_floor": 1e-4,
    "conv_bias": True,
    "bias": False,
}
# ssm_cfg keys that change only which CUDA path mamba_ssm takes, not the model.
_ORIGINAL_SSM_IGNORED = {"use_fast_path", "layer_idx"}

# Defaults of transformers' MambaConfig (version 4.39 onwards) for keys an hf-layout file may omit.
_HF_DEFAULTS = {
    "state_size": 16,
    "conv_kernel": 4,
    "expand": 2,
    "time_step_rank": "auto",
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_init_scheme": "random",
    "time_step_scale": 1.0,
    "time_step_floor": 1e-4,
    "use_bias": False,
    "use_conv_bias": True,
    "layer_norm_epsilon": 1e-5,
    "residual_in_fp32": True,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}

MIXERS = ("mamba", "s4d")


class ConfigError(ValueError):
    """A config.json that this library cannot build a model from."""


def _round_up(value: int, multiple: int) -> int:
    return value if multiple <= 1 else multiple * math.ceil(value / multiple)


@dataclass
class MambaConfig:
    """Settings of a Mamba-1 language model, in this library's own names.

    ``vocab_size`` is the number of embedding rows (already padded); ``unpadded_vocab_size`` is
    the tokenizer's vocabulary when known, so generation never samples a padding row.
    """

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50280
    unpadded_vocab_size: int | None = None
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    norm_epsilon: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 8
    mixer: str = "mamba"
    # False drops the mixer's gate branch z, which gives the "no gate" architecture of the
    # Selective Copying table in Gu and Dao (2023). Published checkpoints are all gated.
    gated: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # Where the settings came from ("original", "hf" or "mambakit"); informational only.
    layout: str = field(default="mambakit", compare=False)

    def __post_init__(self) -> None:
        if self.dt_rank == "auto":
            self.dt_rank = math.ceil(self.d_model / 16)
        for name in ("d_model", "n_layer", "vocab_size", "d_state", "d_conv", "expand", "dt_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.unpadded_vocab_size is not None and not 1 <= self.unpadded_vocab_size <= self.vocab_size:
            raise ConfigError(
                f"unpadded_vocab_size {self.unpadded_vocab_size} must be between 1 and vocab_size {self.vocab_size}"
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ConfigError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if self.dt_init not in ("random", "constant"):
            raise ConfigError(f"dt_init must be 'random' or 'constant', got {self.dt_init!r}")
        if self.mixer not in MIXERS:
            raise ConfigError(f"mixer must be one of {', '.join(MIXERS)}, got {self.mixer!r}")
        if not isinstance(self.gated, bool):
            raise ConfigError(f"gated must be true or false, got {self.gated!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def usable_vocab_size(self) -> int:
        """Ids a tokenizer can produce; rows at or above this are padding and are never sampled."""
        return self.unpadded_vocab_size or self.vocab_size

    # Reading

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "MambaConfig":
        """Build a config from a parsed ``config.json`` of either layout (or our own)."""
        layout = detect_layout(raw)
        if layout == "original":
            return _from_original(raw)
        if layout == "hf":
            return _from_hf(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known - {"model_type", "mambakit_version"})
        if unknown:
            raise ConfigError(f"unknown keys in mambakit config: {', '.join(unknown)}")
        values = {k: v for k, v in raw.items() if k in known}
        return cls(**values)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "MambaConfig":
        """Read ``config.json`` from a model folder (or the file itself)."""
        path = os.fspath(path)
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"config.json not found at {file}; pass the folder of a downloaded Mamba checkpoint "
                "(for example state-spaces/mamba-130m or state-spaces/mamba-130m-hf)"
            )
        with open(file, encoding="utf-8") as handle:
            try:
                raw = json.load(handle)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{file} is not valid JSON: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"{file} must contain a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw)

    # Writing

    def to_dict(self, layout: str = "hf") -> dict[str, Any]:
        """Return the config as a ``config.json`` dictionary in ``layout`` ("hf" or "original")."""
        if layout in ("hf", "original"):
            if self.mixer != "mamba":
                raise ConfigError(f"mixer {self.mixer!r} has no published layout; save it with layout='mambakit'")
            if not self.gated:
                raise ConfigError("ungated mixers (gated=False) have no published layout; save with layout='mambakit'")
        if layout == "hf":
            return _to_hf(self)
        if layout == "original":
            return _to_original(self)
        if layout == "mambakit":
            values = dataclasses.asdict(self)
            values.pop("layout")
            return {"model_type": "mambakit", **values}
        raise ValueError(f"invalid layout {layout!r}; expected 'hf', 'original' or 'mambakit'")


def detect_layout(raw: dict[str, Any]) -> str:
    """Return "original", "hf" or "mambakit" from the keys of a ``config.json`` dictionary."""
    model_type = raw.get("model_type")
    if model_type == "mambakit":
        return "mambakit"
    if model_type not in (None, "mamba"):
        raise ConfigError(
            f"model_type {model_type!r} is not a Mamba-1 model; this library loads model_type 'mamba' "
            "(transformers layout) or the original state-spaces layout"
        )
    if "hidden_size" in raw:
        return "hf"
    if "d_model" in raw:
        return "original"
    raise ConfigError(
        "config.json has neither 'd_model' (original state-spaces layout) nor 'hidden_size' "
        "(transformers layout); is this a Mamba checkpoint?"
    )


def _require(raw: dict[str, Any], key: str, layout: str) -> Any:
    if key not in raw:
        raise ConfigError(f"config.json ({layout} layout) is missing the required key {key!r}")
    return raw[key]


def _from_original(raw: dict[str, Any]) -> MambaConfig:
    ssm_cfg = dict(raw.get("ssm_cfg") or {})
    if ssm_cfg.get("layer", "Mamba1") != "Mamba1":
        raise ConfigError(
            f"ssm_cfg.layer is {ssm_cfg['layer']!r}; only Mamba-1 models are supported (Mamba-2 is not implemented)"
        )
    ssm_cfg.pop("layer", None)
    unknown = sorted(set(ssm_cfg) - set(_ORIGINAL_SSM_DEFAULTS) - _ORIGINAL_SSM_IGNORED)
    if unknown:
        raise ConfigError(f"ssm_cfg has settings this library does not implement: {', '.join(unknown)}")
    if raw.get("attn_layer_idx"):
        raise ConfigError(
            f"attn_layer_idx is {raw['attn_layer_idx']!r}; hybrid models with attention layers are not supported"
        )
    if raw.get("d_intermediate", 0):
        raise ConfigError(
            f"d_intermediate is {raw['d_intermediate']!r}; blocks with an MLP after the mixer are not supported"
        )
    if raw.get("rms_norm", True) is not True:
        raise ConfigError("rms_norm is false; only RMSNorm models are supported (LayerNorm is not implemented)")

    settings = {**_ORIGINAL_SSM_DEFAULTS, **{k: v for k, v in ssm_cfg.items() if k not in _ORIGINAL_SSM_IGNORED}}
    vocab = _require(raw, "vocab_size", "original")
    multiple = raw.get("pad_vocab_size_multiple", 8)
    return MambaConfig(
        d_model=_require(raw, "d_model", "original"),
        n_layer=_require(raw, "n_layer", "original"),
        vocab_size=_round_up(vocab, multiple),
        unpadded_vocab_size=vocab,
        pad_vocab_size_multiple=multiple,
        residual_in_fp32=raw.get("residual_in_fp32", True),
        tie_embeddings=raw.get("tie_embeddings", True),
        norm_epsilon=raw.get("norm_epsilon", 1e-5),
        layout="original",
        **settings,
    )


def _from_hf(raw: dict[str, Any]) -> MambaConfig:
    settings = {**_HF_DEFAULTS, **raw}
    if settings["hidden_act"] != "silu":
        raise ConfigError(f"hidden_act is {settings['hidden_act']!r}; only 'silu' is supported")
    eos = settings.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return MambaConfig(
        d_model=_require(raw, "hidden_size", "hf"),
        n_layer=_require(raw, "num_hidden_layers", "hf"),
        vocab_size=_require(raw, "vocab_size", "hf"),
        d_state=settings["state_size"],
        d_conv=settings["conv_kernel"],
        expand=settings["expand"],
        dt_rank=settings["time_step_rank"],
        dt_min=settings["time_step_min"],
        dt_max=settings["time_step_max"],
        dt_init=settings["time_step_init_scheme"],
        dt_scale=settings["time_step_scale"],
        dt_init_floor=settings["time_step_floor"],
        conv_bias=settings["use_conv_bias"],
        bias=settings["use_bias"],
        norm_epsilon=settings["layer_norm_epsilon"],
        residual_in_fp32=settings["residual_in_fp32"],
        tie_embeddings=settings["tie_word_embeddings"],
        pad_vocab_size_multiple=settings.get("pad_vocab_size_multiple", 8),
        unpadded_vocab_size=raw.get("mambakit_unpadded_vocab_size"),
        bos_token_id=settings.get("bos_token_id"),
        eos_token_id=eos,
        pad_token_id=settings.get("pad_token_id"),
        layout="hf",
    )


def _to_hf(config: MambaConfig) -> dict[str, Any]:
    raw = {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layer,
        "state_size": config.d_state,
        "conv_kernel": config.d_conv,
        "expand": config.expand,
        "intermediate_size": config.d_inner,
        "time_step_rank": config.dt_rank,
        "time_step_min": config.dt_min,
        "time_step_max": config.dt_max,
        "time_step_init_scheme": config.dt_init,
        "time_step_scale": config.dt_scale,
        "time_step_floor": config.dt_init_floor,
        "use_bias": config.bias,
        "use_conv_bias": config.conv_bias,
        "layer_norm_epsilon": config.norm_epsilon,
        "residual_in_fp32": config.residual_in_fp32,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "pad_vocab_size_multiple": config.pad_vocab_size_multiple,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }
    if config.unpadded_vocab_size is not None:
        # transformers ignores unknown keys; we read it back so padding rows stay unsampled.
        raw["mambakit_unpadded_vocab_size"] = config.unpadded_vocab_size
    return raw


def _to_original(config: MambaConfig) -> dict[str, Any]:
    vocab, multiple = config.vocab_size, 1
    unpadded = config.unpadded_vocab_size
    if unpadded is not None and _round_up(unpadded, config.pad_vocab_size_multiple) == config.vocab_size:
        vocab, multiple = unpadded, config.pad_vocab_size_multiple
    ssm_cfg = {key: getattr(config, key) for key in _ORIGINAL_SSM_DEFAULTS}
    return {
        "d_model": config.d_model,
        "d_intermediate": 0,
        "n_layer": config.n_layer,
        "vocab_size": vocab,
        "ssm_cfg": ssm_cfg,
        "attn_layer_idx": [],
        "attn_cfg": {},
        "rms_norm": True,
        "residual_in_fp32": config.residual_in_fp32,
        "fused_add_norm": True,
        "pad_vocab_size_multiple": multiple,
        "tie_embeddings": config.tie_embeddings,
    }
