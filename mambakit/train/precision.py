"""Mixed precision: bf16 autocast around the forward pass, with fp32 weights and loss.

With ``--dtype bf16`` the matrix products and convolutions of the forward pass run in bf16 under
``torch.autocast``, while the weights, gradients and AdamW state stay fp32. The recurrent
parameters (A_log, D and the dt bias) enter the scan as fp32, the scan kernels accumulate their
state in fp32, and the trainer casts the logits to fp32 before the cross-entropy.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def autocast(dtype: str, device: torch.device):
    """Return the autocast context for a training ``dtype`` ("fp32" or "bf16") on ``device``."""
    if dtype not in DTYPES:
        raise ValueError(f"invalid dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])
