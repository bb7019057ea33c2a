"""Token data for language-model training: tokenise documents, split, and draw random windows.

Documents are joined into one token stream with EOS between them, so the model learns where a
text ends. Training draws windows of ``seq_len + 1`` tokens at random offsets (inputs and
next-token targets); validation walks its split in fixed, non-overlapping windows so every
evaluation uses the same tokens.

``build_splits`` keeps the whole token stream in memory. ``shards.open_shards`` gives the same
two splits from memory-mapped files written by ``mambakit data prepare``; ``sample_batch`` and
``validation_batches`` take either, since both support ``len()`` and slicing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

# read_text_file, split_documents and expand_paths lived here before documents.py; they are
# re-exported so existing imports keep working.
from mambakit.train.documents import expand_paths, iter_documents, read_text_file, split_documents  # noqa: F401

logger = logging.getLogger(__name__)


def token_dtype(vocab_size: int) -> np.dtype:
    """Return the smallest unsigned dtype that stores ids below ``vocab_size``: uint16 or uint32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


def tokenize_documents(tokenizer, documents: list[str], eos_token_id: int) -> np.ndarray:
    """Encode documents into one stream with EOS after each; uint16 when the vocabulary allows."""
    dtype = token_dtype(tokenizer.vocab_size)
    pieces = []
    for ids in tokenizer.encode_batch(documents):
        pieces.append(np.asarray(ids + [eos_token_id], dtype=dtype))
    if not pieces:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(pieces)


def split_document_order(n_documents: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle document indices with ``seed`` and return (validation indices, training indices).

    The validation split takes ``round(n_documents * validation_fraction)`` documents, and at
    least one when the fraction is positive.
    """
    order = np.random.default_rng(seed).permutation(n_documents)
    n_validation = int(round(n_documents * validation_fraction))
    if validation_fraction > 0:
        n_validation = max(n_validation, 1)
    return order[:n_validation], order[n_validation:]


@dataclass
class TokenSplits:
    """Training and validation token streams: in-memory arrays or ``shards.TokenShards``."""

    train: np.ndarray
    validation: np.ndarray


def build_splits(
    tokenizer,
    paths: list[str],
    seq_len: int,
    validation_fraction: float = 0.05,
    seed: int = 0,
) -> TokenSplits:
    """Tokenise the files and hold out a random ``validation_fraction`` of documents."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; train one with an '<|endoftext|>' special token")

    documents = list(iter_documents(paths))
    if not documents:
        raise ValueError(f"the training files contain no text: {', '.join(paths)}")

    validation_order, train_order = split_document_order(len(documents), validation_fraction, seed)
    validation_docs = [documents[i] for i in validation_order]
    train_docs = [documents[i] for i in train_order]

    splits = TokenSplits(
        train=tokenize_documents(tokenizer, train_docs, eos),
        validation=tokenize_documents(tokenizer, validation_docs, eos),
    )
    if len(splits.train) < seq_len + 1:
        raise ValueError(
            f"the training split has {len(splits.train)} tokens, fewer than one window of seq_len + 1 = "
            f"{seq_len + 1}; add text or lower --seq-len"
        )
    logger.info(
        "data: %d documents, %d train tokens, %d validation tokens",
        len(documents), len(splits.train), len(splits.validation),
    )
    return splits


def sample_batch(
    tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows; returns inputs and targets, each (batch, seq_len) int64."""
    high = len(tokens) - seq_len - 1
    starts = torch.randint(0, high + 1, (batch_size,), generator=generator).tolist()
    windows = np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]


def validation_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int):
    """Yield fixed (inputs, targets) batches that tile the validation split from its start."""
    n_windows = (len(tokens) - 1) // seq_len
    starts = [i * seq_len for i in range(n_windows)][: batch_size * max_batches]
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        windows = np.stack([tokens[s:s + seq_len + 1] for s in chunk]).astype(np.int64)
        windows = torch.from_numpy(windows)
        yield windows[:, :-1], windows[:, 1:]
