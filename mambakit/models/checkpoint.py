"""Checkpoint I/O: strict loading of both published layouts, and atomic safetensors saving.

A model folder contains ``config.json`` plus weights in one of these files:
``model.safetensors``, ``pytorch_model.bin``, or a sharded set named by
``model.safetensors.index.json`` / ``pytorch_model.bin.index.json``. A ModelScope snapshot
(``AI-ModelScope/mamba-130m``, with dots in names written as ``___``) is an ordinary folder.

Weight names differ between the layouts only in the embedding: ``backbone.embedding.weight``
(original) against ``backbone.embeddings.weight`` (transformers).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import torch
from safetensors.torch import load_file, save_file

from mambakit.config import MambaConfig

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_HF_EMBEDDING = "backbone.embeddings.weight"
_OUR_EMBEDDING = "backbone.embedding.weight"


class CheckpointError(ValueError):
    """Weights that do not fit the model described by config.json."""


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if dtype not in names:
        raise ValueError(f"invalid dtype {dtype!r}; expected one of {', '.join(names)}")
    return names[dtype]


def _load_weight_file(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        return load_file(file)
    # weights_only=True refuses arbitrary pickled objects, so a downloaded .bin cannot run code.
    return torch.load(file, map_location="cpu", weights_only=True)


def find_weight_files(folder: str) -> list[str]:
    """Return the weight files of a model folder, in load order."""
    for name in INDEX_FILES:
        index_path = os.path.join(folder, name)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as handle:
                weight_map = json.load(handle).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index_path} has no 'weight_map'; the sharded checkpoint is incomplete")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
            if missing:
                raise FileNotFoundError(f"shards listed in {index_path} are missing: {', '.join(missing)}")
            return [os.path.join(folder, s) for s in shards]
    for name in WEIGHT_FILES:
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            return [file]
    raise FileNotFoundError(
        f"no weights found in {folder}; expected one of {', '.join(WEIGHT_FILES + INDEX_FILES)}"
    )


def read_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """Read all weights of a model folder into one state dict, with our key names."""
    state = {}
    for file in find_weight_files(folder):
        state.update(_load_weight_file(file))
    if _HF_EMBEDDING in state:
        state[_OUR_EMBEDDING] = state.pop(_HF_EMBEDDING)
    return state


def load_state_dict_strict(model, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model``; raise one error listing every missing, unexpected or misshapen tensor."""
    expected = model.state_dict()
    state = dict(state)
    tied = model.config.tie_embeddings
    if tied:
        # A tied head is the embedding: some files store it twice, most not at all.
        head = state.pop("lm_head.weight", None)
        embedding = state.get(_OUR_EMBEDDING)
        if head is not None and embedding is not None and not torch.equal(head, embedding):
            raise CheckpointError(
                "config ties the LM head to the embedding, but the checkpoint's lm_head.weight differs from "
                "the embedding; set tie_embeddings (tie_word_embeddings) to false in config.json"
            )
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or misshapen:
        lines = []
        if missing:
            lines.append("missing: " + ", ".join(missing))
        if unexpected:
            lines.append("unexpected: " + ", ".join(unexpected))
        if misshapen:
            lines.append("wrong shape: " + "; ".join(misshapen))
        raise CheckpointError("checkpoint does not match config.json\n  " + "\n  ".join(lines))
    model.load_state_dict(state, strict=not tied)


def load_pretrained(path, dtype=None, device=None):
    """Build a ``Mamba`` from a local model folder.

    Args:
        path: folder with config.json and weights.
        dtype: cast floating weights to this dtype (A_log, D and dt bias stay fp32); None keeps
            fp32.
        device: move the model there.
    """
    from mambakit.models.mamba_lm import Mamba

    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"model folder not found: {folder}; download a checkpoint (for example state-spaces/mamba-130m) "
            "into a local folder and pass its path"
        )
    config = MambaConfig.from_pretrained(folder)
    state = read_state_dict(folder)
    with torch.device("meta"):
        model = Mamba(config)
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    if config.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    dtype = _resolve_dtype(dtype)
    if dtype is not None:
        model.cast(dtype)
    if device is not None:
        model.to(device)
    model.eval()
    logger.info("loaded %s (%s layout, %d parameters)", folder, config.layout, model.num_parameters())
    return model


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: str, write) -> None:
    """Write via a temporary file in the same folder and rename it, so a crash never leaves half a file."""
    folder = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates the file readable by its owner only; give it the usual umask mode.
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_pretrained(model, path, layout: str = "hf") -> None:
    """Write ``model.safetensors`` and ``config.json`` (``layout`` "hf", "original" or "mambakit")."""
    folder = os.fspath(path)
    os.makedirs(folder, exist_ok=True)
    config_dict = model.config.to_dict(layout)

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # safetensors rejects shared storage; the head is re-tied on load
    if layout == "hf":
        state[_HF_EMBEDDING] = state.pop(_OUR_EMBEDDING)

    _atomic_write(os.path.join(folder, "model.safetensors"), lambda file: save_file(state, file, metadata={"format": "pt"}))
    text = json.dumps(config_dict, indent=2, ensure_ascii=False) + "\n"

    def write_config(file: str) -> None:
        with open(file, "w", encoding="utf-8") as handle:
            handle.write(text)

    _atomic_write(os.path.join(folder, "config.json"), write_config)
