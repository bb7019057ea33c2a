"""Training checkpoints: atomic writes, the newest-first listing, and pruning to the last K.

A checkpoint is one ``torch.save`` file holding plain containers of tensors and numbers (model,
optimizer and scheduler state, step, RNG states), so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile

import torch

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(folder: str, step: int) -> str:
    return os.path.join(folder, f"step_{step:08d}.pt")


def list_checkpoints(folder: str) -> list[tuple[int, str]]:
    """Return ``(step, path)`` of the complete checkpoints in ``folder``, oldest first."""
    if not os.path.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _NAME.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return sorted(found)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: dict, folder: str, step: int, keep_last: int = 3) -> str:
    """Write ``state`` for ``step`` atomically, then delete all but the newest ``keep_last``.

    The file is written under a temporary name and renamed into place, so a crash during the
    write leaves the previous checkpoints untouched and no partial ``step_*.pt`` behind.
    """
    os.makedirs(folder, exist_ok=True)
    path = checkpoint_path(folder, step)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".tmp-step_", suffix=".pt")
    os.close(handle)
    try:
        torch.save(state, temporary)
        os.chmod(temporary, 0o666 & ~_current_umask())
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise

    if keep_last > 0:
        for _, old in list_checkpoints(folder)[:-keep_last]:
            os.remove(old)
    logger.info("saved checkpoint %s", path)
    return path


def load_latest_checkpoint(folder: str) -> dict | None:
    """Load the newest checkpoint in ``folder`` (tensors on the CPU), or return None if there is none."""
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        return None
    step, path = checkpoints[-1]
    logger.info("resuming from %s (step %d)", path, step)
    return torch.load(path, map_location="cpu", weights_only=True)
