"""A GPT-NeoX-style decoder-only Transformer, the baseline Mamba's scaling is compared with.

Shape letters:

    b   batch
    l   length of the new tokens
    T   ``max_length`` of a KV cache
    m   ``d_model``
    h   attention heads
    e   head size, m / h
    r   rotary dimensions per head
    V   ``vocab_size``
    L   layers

Architecture, chosen to follow GPT-NeoX (the Pythia models):

- rotary position embeddings on the first ``rotary_fraction`` of each head's dimensions of q and
  k (GPT-NeoX uses a quarter), in the "rotate half" layout;
- pre-norm LayerNorm and a *parallel* residual by default,
  ``x + attention(ln_1(x)) + mlp(ln_2(x))`` (``parallel_residual=False`` gives the sequential
  ``x' = x + attention(ln_1(x)); x' + mlp(ln_2(x'))``);
- a GELU MLP of width ``4 * d_model``;
- a head *tied* to the input embedding by default, like the Mamba models it is compared with, so
  both models spend the same parameters on the vocabulary and the layer count alone sets the
  size. GPT-NeoX itself unties them (``tie_embeddings=False``).

Module names follow ``transformers``' ``GPTNeoXForCausalLM`` (``embed_in``,
``layers.{i}.attention.query_key_value``, ``mlp.dense_h_to_4h``, ...) with ``backbone.`` in place
of ``gpt_neox.``, so its weights load with a prefix rename (checked with transformers 5.25).
Attention runs through ``torch.nn.functional.scaled_dot_product_attention``.

``TransformersGPTNeoX`` wraps ``transformers``' own implementation behind the same interface for
``mambakit bench scaling --baseline transformers``.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambakit.config import MambaConfig

logger = logging.getLogger(__name__)


@dataclass
class TransformerConfig:
    """Settings of the baseline Transformer.

    ``n_head`` defaults to ``d_model // 64`` (head size 64, as in GPT-NeoX and Pythia).
    """

    d_model: int = 768
    n_layer: int = 12
    vocab_size: int = 50280
    n_head: int | None = None
    mlp_ratio: int = 4
    rotary_fraction: float = 0.25
    rotary_base: float = 10000.0
    norm_epsilon: float = 1e-5
    parallel_residual: bool = True
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_head is None:
            if self.d_model % 64 != 0:
                raise ValueError(
                    f"d_model {self.d_model} is not a multiple of 64, so the default head size of 64 does not fit; "
                    "pass n_head explicitly"
                )
            self.n_head = self.d_model // 64
        if self.n_head < 1 or self.d_model % self.n_head != 0:
            raise ValueError(f"d_model {self.d_model} must be a positive multiple of n_head {self.n_head}")
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise ValueError(f"rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        if self.rotary_dim < 2 or self.rotary_dim % 2 != 0:
            raise ValueError(
                f"rotary_fraction {self.rotary_fraction} of head size {self.head_size} gives {self.rotary_dim} "
                "rotary dimensions; it must be an even number of at least 2"
            )

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_head

    @property
    def rotary_dim(self) -> int:
        """Rotated dimensions per head, r; the same rounding (truncation) as GPT-NeoX."""
        return int(self.head_size * self.rotary_fraction)


class KVCache:
    """Preallocated keys and values of every layer for a batch of sequences.

    The tensors are allocated at full ``max_length`` up front, so the memory a long context needs
    is taken (and measured) when the cache is built, not discovered during decoding.

    Attributes:
        keys: (L, b, h, T, e), keys after the rotary embedding.
        values: (L, b, h, T, e).
        length: tokens already stored per sequence; the same for every sequence in the batch.
    """

    def __init__(
        self,
        config: TransformerConfig,
        batch_size: int,
        max_length: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        shape = (config.n_layer, batch_size, config.n_head, max_length, config.head_size)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def max_length(self) -> int:
        return self.keys.shape[3]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return views (keys (b, h, T, e), values (b, h, T, e)) of layer ``index``."""
        return self.keys[index], self.values[index]

    def reset(self) -> None:
        """Forget the stored context; the memory stays allocated."""
        self.length = 0

    def nbytes(self) -> int:
        """Return the bytes of keys and values that hold the current context (``length`` tokens)."""
        per_token = self.keys.nbytes // self.max_length
        return 2 * per_token * self.length

    def allocated_nbytes(self) -> int:
        """Return the bytes allocated for ``max_length`` tokens, used or not."""
        return self.keys.nbytes + self.values.nbytes


class RotaryEmbedding(nn.Module):
    """Cosines and sines of the rotary position embedding for given positions."""

    def __init__(self, rotary_dim: int, base: float) -> None:
        super().__init__()
        # Frequencies base^(-2i/r) for i < r/2: pair i turns by position * frequency_i radians.
        exponents = torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim
        self.register_buffer("inv_freq", base**-exponents, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin), each (l, r), for integer ``positions`` of shape (l,)."""
        angles = torch.outer(positions.to(torch.float32), self.inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first r dimensions of x (b, h, l, e) by the angles of each position.

    ``cos`` and ``sin`` are (l, r). Dimension i and i + r/2 form one rotated pair ("rotate half",
    GPT-NeoX's layout); dimensions from r on pass through unchanged.
    """
    rotary_dim = cos.shape[-1]
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = rotated * cos.to(x.dtype) + _rotate_half(rotated) * sin.to(x.dtype)
    return torch.cat((rotated, passed), dim=-1)


class Attention(nn.Module):
    """Causal multi-head self-attention with rotary q and k and an optional KV cache."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.head_size
        self.query_key_value = nn.Linear(config.d_model, 3 * config.d_model)
        self.dense = nn.Linear(config.d_model, config.d_model)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        offset: int = 0,
    ) -> torch.Tensor:
        """Attend from x (b, l, m) to itself and to the cached context; returns (b, l, m).

        ``cache`` is this layer's (keys, values), each (b, h, T, e). The new keys and values are
        written at positions ``offset .. offset + l - 1``, and attention reads positions
        ``0 .. offset + l - 1``.
        """
        batch, length, _ = x.shape

        # GPT-NeoX packs q, k and v per head: (b, l, h, 3e), then split along the last axis.
        qkv = self.query_key_value(x).view(batch, length, self.n_head, 3 * self.head_size).transpose(1, 2)
        query, key, value = qkv.chunk(3, dim=-1)  # (b, h, l, e) each
        query = apply_rotary(query, cos, sin)
        key = apply_rotary(key, cos, sin)

        if cache is not None:
            cached_keys, cached_values = cache
            cached_keys[:, :, offset : offset + length] = key
            cached_values[:, :, offset : offset + length] = value
            key = cached_keys[:, :, : offset + length]
            value = cached_values[:, :, : offset + length]

        # SDPA's is_causal aligns the mask to the top-left corner, which is right only when the
        # queries start at position 0. A single query may see the whole context, so it needs no
        # mask. A chunk that continues a context needs the mask aligned bottom-right, so that
        # query i (at position offset + i) attends to keys 0 .. offset + i.
        if offset == 0:
            out = F.scaled_dot_product_attention(query, key, value, is_causal=True)
        elif length == 1:
            out = F.scaled_dot_product_attention(query, key, value)
        else:
            mask = torch.ones(length, offset + length, dtype=torch.bool, device=x.device).tril(diagonal=offset)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)

        out = out.transpose(1, 2).reshape(batch, length, self.n_head * self.head_size)
        return self.dense(out)


class MLP(nn.Module):
    """Two linear layers with a GELU between them, ``d_model -> mlp_ratio * d_model -> d_model``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.d_model, config.mlp_ratio * config.d_model)
        self.dense_4h_to_h = nn.Linear(config.mlp_ratio * config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))


class TransformerLayer(nn.Module):
    """Pre-norm block: attention and MLP, added in parallel or one after the other."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.parallel_residual = config.parallel_residual
        self.input_layernorm = nn.LayerNorm(config.d_model, eps=config.norm_epsilon)
        self.post_attention_layernorm = nn.LayerNorm(config.d_model, eps=config.norm_epsilon)
        self.attention = Attention(config)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, cache=None, offset: int = 0) -> torch.Tensor:
        """Apply the block to x (b, l, m) and return (b, l, m)."""
        attended = self.attention(self.input_layernorm(x), cos, sin, cache=cache, offset=offset)
        if self.parallel_residual:
            return x + attended + self.mlp(self.post_attention_layernorm(x))
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x))


class TransformerBackbone(nn.Module):
    """Embedding, ``n_layer`` blocks and the final LayerNorm."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.embed_in = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.n_layer))
        self.final_layer_norm = nn.LayerNorm(config.d_model, eps=config.norm_epsilon)


class TransformerLM(nn.Module):
    """Decoder-only causal language model with the same calling convention as ``Mamba``.

    ``model(input_ids)`` returns logits (b, l, V). With a ``KVCache`` from ``allocate_cache``, a
    multi-token call appends to the cache (prefill, in one or several chunks) and ``step``
    appends one token per sequence.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = TransformerBackbone(config)
        self.rotary = RotaryEmbedding(config.rotary_dim, config.rotary_base)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embed_in.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Draw weights from N(0, 0.02) with zero biases; scale the residual outputs by depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

        # Each block adds two outputs to the residual stream. Shrinking them by sqrt(2 * n_layer)
        # keeps the stream's variance independent of depth at initialisation, as GPT-2 does.
        for layer in self.backbone.layers:
            layer.attention.dense.weight.div_(math.sqrt(2 * self.config.n_layer))
            layer.mlp.dense_4h_to_h.weight.div_(math.sqrt(2 * self.config.n_layer))

    def allocate_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None) -> KVCache:
        """Return an empty KV cache with room for ``max_length`` tokens per sequence."""
        weight = self.backbone.embed_in.weight
        return KVCache(self.config, batch_size, max_length, device=weight.device, dtype=dtype or weight.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Compute next-token logits.

        Args:
            input_ids: (b, l) token ids.
            cache: append to this cache and attend to its context, or None for a stateless
                forward over ``input_ids`` alone.
            last_only: return logits of the last position only, (b, 1, V).

        Returns:
            logits (b, l, V) or (b, 1, V).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        offset = 0
        if cache is not None:
            if cache.batch_size != batch:
                raise ValueError(
                    f"the cache contains {cache.batch_size} sequences but input_ids has batch {batch}; "
                    "allocate a cache with the batch size of input_ids"
                )
            if cache.length + length > cache.max_length:
                raise ValueError(
                    f"the KV cache has room for {cache.max_length} tokens and contains {cache.length}, so "
                    f"{length} more do not fit; allocate it with max_length >= {cache.length + length}"
                )
            offset = cache.length

        positions = torch.arange(offset, offset + length, device=input_ids.device)
        cos, sin = self.rotary(positions)

        hidden = self.backbone.embed_in(input_ids)
        for index, layer in enumerate(self.backbone.layers):
            layer_cache = cache.layer(index) if cache is not None else None
            hidden = layer(hidden, cos, sin, cache=layer_cache, offset=offset)
        if cache is not None:
            cache.length += length

        if last_only:
            hidden = hidden[:, -1:]
        return self.lm_head(self.backbone.final_layer_norm(hidden))

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append one token per sequence, (b,) ids, and return next-token logits (b, V)."""
        if input_ids.dim() != 1:
            raise ValueError(f"step takes one token per sequence, shape (batch,), got {tuple(input_ids.shape)}")
        return self.forward(input_ids[:, None], cache)[:, 0]

    def num_parameters(self) -> int:
        """Count distinct parameters (a tied head is counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


# Parameter matching


@dataclass
class ParameterMatch:
    """A Transformer config sized to a Mamba model, with both parameter counts."""

    config: TransformerConfig
    transformer_parameters: int
    mamba_parameters: int

    @property
    def relative_difference(self) -> float:
        """(transformer - mamba) / mamba; positive when the Transformer is larger."""
        return (self.transformer_parameters - self.mamba_parameters) / self.mamba_parameters


def count_parameters(config: TransformerConfig) -> int:
    """Count the parameters of ``TransformerLM(config)`` without allocating its weights."""
    with torch.device("meta"):
        return TransformerLM(config).num_parameters()


def _count_mamba_parameters(config: MambaConfig) -> int:
    from mambakit.models.mamba_lm import Mamba

    with torch.device("meta"):
        return Mamba(config).num_parameters()


def matching_transformer_config(mamba_config: MambaConfig, **overrides) -> ParameterMatch:
    """Size a Transformer to a Mamba model: same width and vocabulary, closest parameter count.

    The layer count is the one whose total parameter count is closest to the Mamba model's; on
    a tie the shallower model wins. The head is tied exactly when the Mamba model's is.
    ``overrides`` set other ``TransformerConfig`` fields (not ``n_layer``).
    """
    if "n_layer" in overrides:
        raise ValueError("n_layer is what matching_transformer_config chooses; do not pass it as an override")
    settings = dict(
        d_model=mamba_config.d_model,
        vocab_size=mamba_config.vocab_size,
        tie_embeddings=mamba_config.tie_embeddings,
    )
    settings.update(overrides)
    target = _count_mamba_parameters(mamba_config)

    # Every layer has the same size, so the count is linear in n_layer: fixed + n * per_layer.
    one_layer = count_parameters(TransformerConfig(n_layer=1, **settings))
    per_layer = count_parameters(TransformerConfig(n_layer=2, **settings)) - one_layer
    fixed = one_layer - per_layer
    estimate = (target - fixed) / per_layer
    candidates = {max(1, math.floor(estimate)), max(1, math.ceil(estimate))}
    n_layer = min(candidates, key=lambda n: (abs(fixed + n * per_layer - target), n))

    config = TransformerConfig(n_layer=n_layer, **settings)
    match = ParameterMatch(config, count_parameters(config), target)
    logger.info(
        "Transformer with %d layers has %d parameters; the Mamba model has %d (%+.1f%%)",
        n_layer, match.transformer_parameters, target, 100 * match.relative_difference,
    )
    return match


# transformers' implementation


class TransformersKVCache:
    """A ``transformers`` ``DynamicCache`` with the byte counts of ``KVCache``.

    ``DynamicCache`` grows by concatenation on every call, so nothing is preallocated and the
    allocated size equals the used size.
    """

    def __init__(self, batch_size: int) -> None:
        from transformers import DynamicCache

        self.inner = DynamicCache()
        self.batch_size = batch_size

    @property
    def length(self) -> int:
        return self.inner.get_seq_length()

    def _tensors(self) -> list[torch.Tensor]:
        # transformers 4.56 and later keep per-layer objects in ``layers``; earlier releases kept
        # two lists of tensors.
        # NOTE: only the ``layers`` form has been run (transformers 5.25).
        if hasattr(self.inner, "layers"):
            tensors = []
            for layer in self.inner.layers:
                for name in ("keys", "values"):
                    tensor = getattr(layer, name, None)
                    if isinstance(tensor, torch.Tensor):
                        tensors.append(tensor)
            return tensors
        return list(self.inner.key_cache) + list(self.inner.value_cache)

    def nbytes(self) -> int:
        """Return the bytes of all cached keys and values."""
        return sum(tensor.nbytes for tensor in self._tensors())

    def allocated_nbytes(self) -> int:
        """Return the same as ``nbytes``, because ``DynamicCache`` allocates only what it uses."""
        return self.nbytes()


class TransformersGPTNeoX(nn.Module):
    """``transformers``' ``GPTNeoXForCausalLM`` built from a ``TransformerConfig``.

    It has the calling convention of ``TransformerLM`` (``forward``, ``step``,
    ``allocate_cache``, ``num_parameters``) and uses the SDPA attention implementation.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        try:
            from transformers import AutoModelForCausalLM, GPTNeoXConfig
        except ImportError as error:
            raise ImportError(
                "the transformers baseline needs the transformers package; install it with "
                "`pip install transformers` or use the built-in baseline"
            ) from error

        self.config = config
        neox_config = GPTNeoXConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head,
            intermediate_size=config.mlp_ratio * config.d_model,
            hidden_act="gelu",
            rotary_pct=config.rotary_fraction,
            rotary_emb_base=config.rotary_base,
            layer_norm_eps=config.norm_epsilon,
            use_parallel_residual=config.parallel_residual,
            tie_word_embeddings=config.tie_embeddings,
            max_position_embeddings=1 << 20,
        )
        self.model = AutoModelForCausalLM.from_config(neox_config, attn_implementation="sdpa")

        # transformers 5 renamed ``past_key_values`` to ``cache`` and 4.45 renamed
        # ``num_logits_to_keep`` to ``logits_to_keep``; pass whichever this version takes.
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._keep_argument = next(
            (name for name in ("logits_to_keep", "num_logits_to_keep") if name in parameters), None
        )

    def allocate_cache(self, batch_size: int, max_length: int) -> TransformersKVCache:
        """Return an empty cache; ``max_length`` is unused because ``DynamicCache`` grows."""
        return TransformersKVCache(batch_size)

    def forward(
        self, input_ids: torch.Tensor, cache: TransformersKVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """Return logits (b, l, V), or (b, 1, V) with ``last_only``, appending to ``cache``."""
        kwargs = {"use_cache": cache is not None}
        if cache is not None:
            kwargs[self._cache_argument] = cache.inner
        if last_only and self._keep_argument is not None:
            kwargs[self._keep_argument] = 1
        logits = self.model(input_ids=input_ids, **kwargs).logits
        return logits[:, -1:] if last_only else logits

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: TransformersKVCache) -> torch.Tensor:
        """Append one token per sequence, (b,) ids, and return next-token logits (b, V)."""
        return self.forward(input_ids[:, None], cache)[:, 0]

    def num_parameters(self) -> int:
        """Count distinct parameters (a tied head is counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values())
