"""The Mamba language model: embedding, residual Mamba blocks, final RMSNorm, tied LM head.

Shape letters: b batch, l length, m ``d_model``, V ``vocab_size`` (padded).

Module names follow the checkpoint keys of ``state-spaces/mamba-*`` (``backbone.embedding``,
``backbone.layers.{i}.mixer.*``, ``backbone.norm_f``, ``lm_head``), so loading is a one-to-one
mapping. ``models.checkpoint`` renames the few keys that differ in the transformers layout.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.utils.checkpoint

from mambakit.config import MambaConfig
from mambakit.modules.block import MambaBlock, RMSNorm
from mambakit.modules.cache import InferenceCache
from mambakit.modules.mixer import FP32_PARAMETERS


class MambaBackbone(nn.Module):
    """Embedding, ``n_layer`` residual blocks and the final norm."""

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(
            MambaBlock(config, layer_idx, mixer=_build_mixer(config, layer_idx)) for layer_idx in range(config.n_layer)
        )
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_epsilon)


def _build_mixer(config: MambaConfig, layer_idx: int) -> nn.Module | None:
    if config.mixer == "s4d":
        # The LTI baseline keeps the Mamba mixer's gated structure and width and swaps only the
        # selective scan for S4D, so the two mixers differ in selection alone.
        from mambakit.ssm.lti import S4DMixer

        return S4DMixer(
            config.d_model,
            config.d_inner,
            d_state=config.d_state,
            d_conv=config.d_conv,
            dt_min=config.dt_min,
            dt_max=config.dt_max,
            conv_bias=config.conv_bias,
            bias=config.bias,
            gated=config.gated,
        )
    return None  # MambaBlock builds the Mamba mixer


class Mamba(nn.Module):
    """Mamba-1 causal language model.

    ``model(input_ids)`` returns logits (b, l, V). Pass an ``InferenceCache`` from
    ``allocate_cache`` to run the model recurrently: a multi-token call continues the cache
    (prefill, in one or several pieces) and ``step`` consumes one token per sequence.
    """

    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaBackbone(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.scan_backend = "auto"
        self.gradient_checkpointing = False
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Initialise as the Mamba reference: zero biases, N(0, 0.02) embedding, scaled out_proj."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)

        # Each block adds its out_proj output to the residual stream; dividing by sqrt(n_layer)
        # keeps the stream's variance independent of depth at initialisation (GPT-2's scheme).
        for name, parameter in self.named_parameters():
            if name.endswith("out_proj.weight"):
                nn.init.kaiming_uniform_(parameter, a=math.sqrt(5))
                parameter.div_(math.sqrt(self.config.n_layer))

    # Running

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> InferenceCache:
        """Return an empty inference cache for ``batch_size`` sequences on the model's device."""
        if self.config.mixer != "mamba":
            raise NotImplementedError(f"recurrent inference is implemented for mixer 'mamba', not {self.config.mixer!r}")
        weight = self.backbone.embedding.weight
        return InferenceCache(self.config, batch_size, device=weight.device, dtype=dtype or weight.dtype)

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dtype not in (torch.long, torch.int, torch.int16, torch.uint8):
            raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
        if input_ids.numel() == 0:
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"token id {bad} is out of range for this model's vocabulary of {self.config.vocab_size}; "
                "check that the tokenizer matches the model"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: InferenceCache | None = None,
        attention_mask: torch.Tensor | None = None,
        last_only: bool = False,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Compute next-token logits.

        Args:
            input_ids: (b, l) token ids.
            cache: continue from and update this cache, or None for a stateless forward.
            attention_mask: (b, l), 0 at left-padding positions, or None.
            last_only: return logits of the last position only, (b, 1, V); saves the LM head's
                cost during prefill.
            backend: scan backend for this call; defaults to ``self.scan_backend``.

        Returns:
            logits (b, l, V) or (b, 1, V), in the dtype of the weights.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        self._check_ids(input_ids)
        if cache is not None and cache.batch_size != input_ids.shape[0]:
            raise ValueError(
                f"cache contains {cache.batch_size} sequences but input_ids has batch {input_ids.shape[0]}"
            )
        backend = backend or self.scan_backend

        hidden = self.backbone.embedding(input_ids)
        for index, layer in enumerate(self.backbone.layers):
            layer_cache = cache.layer(index) if cache is not None else None
            if self.gradient_checkpointing and self.training and layer_cache is None:
                hidden = torch.utils.checkpoint.checkpoint(
                    layer, hidden, None, attention_mask, backend, use_reentrant=False
                )
            else:
                hidden = layer(hidden, cache=layer_cache, attention_mask=attention_mask, backend=backend)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]

        if last_only:
            hidden = hidden[:, -1:]
        hidden = self.backbone.norm_f(hidden)
        return self.lm_head(hidden)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: InferenceCache, backend: str | None = None) -> torch.Tensor:
        """Consume one token per sequence, (b,) ids, and return next-token logits (b, V)."""
        if input_ids.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,), got {tuple(input_ids.shape)}")
        self._check_ids(input_ids)
        backend = backend or self.scan_backend
        hidden = self.backbone.embedding(input_ids)
        for index, layer in enumerate(self.backbone.layers):
            hidden = layer.step(hidden, cache.layer(index), backend=backend)
        cache.seqlen_offset += 1
        return self.lm_head(self.backbone.norm_f(hidden))

    # Utilities

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        """Count distinct parameters (a tied head is counted once)."""
        seen = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in seen.values())
        if exclude_embedding:
            total -= self.backbone.embedding.weight.numel()
        return total

    def cast(self, dtype: torch.dtype) -> "Mamba":
        """Cast floating-point weights to ``dtype``, keeping A_log, D and the dt bias in fp32."""
        self.to(dtype)
        for name, parameter in self.named_parameters():
            if name.endswith(FP32_PARAMETERS):
                parameter.data = parameter.data.float()
        return self

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
    ) -> "Mamba":
        """Load a model folder in the original or transformers layout; see ``models.checkpoint``."""
        from mambakit.models.checkpoint import load_pretrained

        return load_pretrained(path, dtype=dtype, device=device)

    def save_pretrained(self, path: str | os.PathLike, layout: str = "hf") -> None:
        """Write safetensors weights and config.json in ``layout`` ("hf" or "original")."""
        from mambakit.models.checkpoint import save_pretrained

        save_pretrained(self, path, layout=layout)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Return parameter names that should get no weight decay: A_log, D, biases and norm weights."""
    names = set()
    for name, parameter in model.named_parameters():
        if getattr(parameter, "_no_weight_decay", False) or parameter.dim() < 2:
            names.add(name)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into AdamW groups with and without weight decay."""
    excluded = no_weight_decay_names(model)
    decay, no_decay = [], []
    seen = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        (no_decay if name in excluded else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
