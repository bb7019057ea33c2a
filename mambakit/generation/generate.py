"""Text generation with the recurrent cache: prefill once, then one constant-cost step per token.

Two levels:

- ``generate_ids`` / ``iter_generate_ids`` work on token ids and need no tokenizer.
- ``generate`` / ``stream_generate`` take text, stop at EOS or stop strings, and stream text
  without ever splitting a multi-byte character.

Prompts of different lengths in one call are left-padded into one batch. The mask keeps the
padding out of the recurrent state, so each prompt yields the same tokens as it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import torch

from mambakit.generation.sampling import SamplingConfig, select_next_tokens


class LogitsConstraint(Protocol):
    """Per-row state that masks tokens before each draw, such as ``utf8.Utf8Constraint``."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the (b, V) logits with the tokens that must not be drawn set to -inf."""
        ...

    def update(self, tokens: torch.Tensor) -> None:
        """Advance the state past the (b,) drawn tokens."""
        ...


@dataclass
class GenerationStep:
    """Tokens chosen at one step: ``tokens`` (b,) and which sequences had already finished."""

    tokens: torch.Tensor
    finished_before: torch.Tensor


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _make_generators(seed: int | None, batch: int, device: torch.device) -> list[torch.Generator] | None:
    if seed is None:
        return None
    generators = []
    for _ in range(batch):
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        generators.append(generator)
    return generators


def _validate_prompts(prompt_ids: Sequence[Sequence[int]], usable_vocab_size: int) -> None:
    if len(prompt_ids) == 0:
        raise ValueError("no prompts given; pass at least one prompt")
    for index, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {index} is empty; generation needs at least one prompt token")
        for token in ids:
            if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < usable_vocab_size:
                raise ValueError(
                    f"prompt {index} has token id {token!r}, outside the vocabulary [0, {usable_vocab_size}); "
                    "check that the tokenizer matches the model"
                )


@torch.no_grad()
def iter_generate_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    logits_constraint: LogitsConstraint | None = None,
) -> Iterator[GenerationStep]:
    """Yield one ``GenerationStep`` per generated position until every sequence ends.

    A sequence ends when it produces ``eos_token_id`` (which is yielded) or after
    ``max_new_tokens`` tokens. Finished sequences keep stepping with EOS as input so the batch
    stays rectangular; their later tokens are marked by ``finished_before``.

    ``logits_constraint`` masks the logits before every draw, greedy included, and is updated
    with the tokens drawn. It must keep ``eos_token_id`` allowed.
    """
    sampling = sampling or SamplingConfig()
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    usable = model.config.usable_vocab_size
    _validate_prompts(prompt_ids, usable)
    if max_new_tokens == 0:
        return

    device = _model_device(model)
    batch = len(prompt_ids)
    longest = max(len(ids) for ids in prompt_ids)
    # Left padding puts every prompt's last token in the last column, where decoding continues.
    input_ids = torch.zeros(batch, longest, dtype=torch.long, device=device)
    mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, longest - len(ids):] = 1
    attention_mask = mask if bool((mask == 0).any()) else None

    seen = None
    if sampling.repetition_penalty != 1.0:
        seen = torch.zeros(batch, model.config.vocab_size, dtype=torch.bool, device=device)
        seen.scatter_(1, input_ids, mask.bool())
    generators = _make_generators(seed, batch, device)

    cache = model.allocate_cache(batch)
    logits = model(input_ids, cache=cache, attention_mask=attention_mask, last_only=True)[:, -1]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        if logits_constraint is not None:
            logits = logits_constraint.mask(logits)
        tokens = select_next_tokens(logits, sampling, seen, usable, generators)
        if eos_token_id is not None:
            tokens = torch.where(finished, torch.full_like(tokens, eos_token_id), tokens)
        if logits_constraint is not None:
            logits_constraint.update(tokens)
        yield GenerationStep(tokens=tokens, finished_before=finished.clone())
        if eos_token_id is not None:
            finished |= tokens == eos_token_id
        if bool(finished.all()):
            return
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        logits = model.step(tokens, cache)


def generate_ids(
    model,
    prompt_ids: Sequence[Sequence[int]] | Sequence[int],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> list[list[int]] | list[int]:
    """Return the new token ids for each prompt (a flat list for a single flat prompt).

    EOS, when generated, is the last id returned for that sequence.
    """
    single = len(prompt_ids) > 0 and isinstance(prompt_ids[0], int)
    prompts = [list(prompt_ids)] if single else [list(p) for p in prompt_ids]
    sampling = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty)
    outputs: list[list[int]] = [[] for _ in prompts]
    for step in iter_generate_ids(model, prompts, max_new_tokens, sampling, eos_token_id, seed):
        for row, (token, done) in enumerate(zip(step.tokens.tolist(), step.finished_before.tolist())):
            if not done:
                outputs[row].append(token)
    return outputs[0] if single else outputs


class _StopStringWatcher:
    """Hold back streamed text that could still turn into a stop string, and cut at the first one."""

    def __init__(self, stop: Sequence[str]) -> None:
        for item in stop:
            if not isinstance(item, str) or item == "":
                raise ValueError(f"stop strings must be non-empty strings, got {item!r}")
        self.stop = list(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add decoded text; return what is safe to emit now."""
        if self.stopped:
            return ""
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        if self.hold == 0:
            out, self.pending = self.pending, ""
            return out
        out, self.pending = self.pending[: -self.hold], self.pending[-self.hold:]
        return out

    def finish(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def _encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    encoded = []
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt {index} must be a string, got {type(prompt).__name__}")
        if prompt == "":
            raise ValueError(f"prompt {index} is empty; give some text to continue")
        encoded.append(tokenizer.encode(prompt))
    return encoded


def stream_generate(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    eos_token_id: int | None = None,
    valid_utf8: bool = True,
) -> Iterator[tuple[int, str]]:
    """Yield ``(prompt index, new text)`` pieces as tokens are generated.

    Text is emitted only in whole characters, and never past EOS or the start of a stop string.
    With ``valid_utf8`` and a byte-level tokenizer, tokens whose bytes would make the output
    invalid UTF-8 are not drawn, but EOS stays allowed (see :mod:`mambakit.generation.utf8`).
    The text can still end in one U+FFFD when ``max_new_tokens`` stops the stream in the middle
    of a character.
    """
    from mambakit.generation.detokenizer import StreamingDetokenizer
    from mambakit.generation.utf8 import build_utf8_constraint

    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    prompt_ids = _encode_prompts(tokenizer, prompt_list)
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
    if eos_token_id is None:
        eos_token_id = model.config.eos_token_id
    sampling = SamplingConfig(temperature, top_k, top_p, min_p, repetition_penalty)
    if isinstance(stop, str):
        stop = [stop]
    constraint = None
    if valid_utf8:
        constraint = build_utf8_constraint(
            tokenizer, prompt_ids, always_allowed_ids=[eos_token_id],
            vocab_size=model.config.usable_vocab_size, device=_model_device(model),
        )

    detokenizers = [StreamingDetokenizer(tokenizer) for _ in prompt_list]
    watchers = [_StopStringWatcher(stop) for _ in prompt_list]
    done = [False] * len(prompt_list)
    steps = iter_generate_ids(model, prompt_ids, max_new_tokens, sampling, eos_token_id, seed, constraint)
    for step in steps:
        for row, token in enumerate(step.tokens.tolist()):
            if done[row] or step.finished_before[row]:
                continue
            if token == eos_token_id:
                done[row] = True
                text = watchers[row].feed(detokenizers[row].flush()) + watchers[row].finish()
            else:
                text = watchers[row].feed(detokenizers[row].push(token))
                if watchers[row].stopped:
                    done[row] = True
            if text:
                yield row, text
        if all(done):
            return
    for row in range(len(prompt_list)):
        if not done[row]:
            text = watchers[row].feed(detokenizers[row].flush()) + watchers[row].finish()
            if text:
                yield row, text


def generate(
    model,
    tokenizer,
    prompt: str | Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stream: Callable[[str], None] | None = None,
    eos_token_id: int | None = None,
    valid_utf8: bool = True,
) -> str | list[str]:
    """Continue ``prompt`` (a string, or a list of strings run as one batch) and return the new text.

    ``stream`` is called with each piece of text as it is produced (single prompt only).
    ``valid_utf8`` masks tokens that would make the output invalid UTF-8, as in ``stream_generate``.
    """
    if stream is not None and not isinstance(prompt, str):
        raise ValueError("stream= works with a single prompt; pass one string or drop stream")
    prompt_list = [prompt] if isinstance(prompt, str) else list(prompt)
    texts = [""] * len(prompt_list)
    pieces = stream_generate(
        model, tokenizer, prompt_list, max_new_tokens, temperature, top_k, top_p, min_p,
        repetition_penalty, seed, stop, eos_token_id, valid_utf8,
    )
    for row, piece in pieces:
        texts[row] += piece
        if stream is not None:
            stream(piece)
    return texts[0] if isinstance(prompt, str) else texts
