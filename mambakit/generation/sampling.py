"""Next-token selection: validation of sampling settings, logit processors and the draw itself.

Shape letters: b batch, V vocabulary (padded rows included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """Settings for choosing each next token.

    ``temperature`` 0 means greedy decoding. ``top_k`` 0, ``top_p`` 1 and ``min_p`` 0 switch
    their filters off; ``repetition_penalty`` 1 switches the penalty off.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer (0 disables it), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if not isinstance(self.min_p, (int, float)) or not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be in [0, 1) (0 disables it), got {self.min_p!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty must be > 0 (1 disables it, above 1 discourages repeats), got {self.repetition_penalty!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens already in the sequence less likely (CTRL's rule, Keskar et al. 2019).

    Positive logits are divided by ``penalty`` and negative ones multiplied, so a penalty above 1
    always lowers a seen token's probability. ``seen`` is a (b, V) boolean mask.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p to (b, V) fp32 logits; removed entries become -inf."""
    logits = logits / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        threshold = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p; the top one stays.
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if config.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        floor = config.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def select_next_tokens(
    logits: torch.Tensor,
    config: SamplingConfig,
    seen: torch.Tensor | None,
    usable_vocab_size: int,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Choose one token per row of (b, V) logits and return (b,) ids below ``usable_vocab_size``.

    Each row draws from its own generator, so a prompt samples the same tokens alone as inside a
    batch when the generators are seeded alike.
    """
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    # Rows past the tokenizer's vocabulary only pad the embedding matrix; never pick them.
    if usable_vocab_size < logits.shape[-1]:
        logits[:, usable_vocab_size:] = float("-inf")
    if config.greedy:
        return logits.argmax(dim=-1)

    probs = torch.softmax(filter_logits(logits, config), dim=-1)
    if generators is None:
        uniforms = torch.rand(probs.shape[0], 1, device=probs.device)
    else:
        uniforms = torch.stack([torch.rand(1, generator=g, device=probs.device) for g in generators])
    # Inverse-CDF draw; clamp guards against the cumulative sum ending a hair below 1.
    cumulative = torch.cumsum(probs, dim=-1)
    ids = torch.searchsorted(cumulative, uniforms * cumulative[:, -1:], right=True).squeeze(-1)
    ids = ids.clamp(max=usable_vocab_size - 1)
    # A zero-probability id can only be reached through rounding; fall back to the argmax then.
    chosen_prob = probs.gather(-1, ids[:, None]).squeeze(-1)
    return torch.where(chosen_prob > 0, ids, probs.argmax(dim=-1))
