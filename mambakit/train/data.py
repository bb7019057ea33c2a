"""Token data for language-model training: tokenise text files, split, and draw random windows.

Documents are joined into one token stream with EOS between them, so the model learns where a
text ends. Training draws windows of ``seq_len + 1`` tokens at random offsets (inputs and
next-token targets); validation walks its split in fixed, non-overlapping windows so every
evaluation sees the same tokens.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


def read_text_file(path: str) -> str:
    """Read a UTF-8 text file; raise ValueError naming the file and offset of invalid bytes."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if b"\x00" in raw[:8192]:
        raise ValueError(f"{path} looks like a binary file (it contains NUL bytes); pass UTF-8 text files")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not valid UTF-8 (invalid byte at offset {error.start}); convert it, "
            "for example with iconv -f GB18030 -t UTF-8"
        ) from error


def split_documents(text: str) -> list[str]:
    """Split text into documents at blank lines, dropping empty ones."""
    documents = [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    return [doc for doc in documents if doc]


def expand_paths(paths: list[str]) -> list[str]:
    """Return the files named by ``paths``, with folders expanded to their .txt files, sorted."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.endswith((".txt", ".md"))
            )
            if not found:
                raise FileNotFoundError(f"folder {path} contains no .txt or .md files")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"training data not found: {path}")
    if not files:
        raise ValueError("no training data given; pass text files or folders with --data")
    return files


def tokenize_documents(tokenizer, documents: list[str], eos_token_id: int) -> np.ndarray:
    """Encode documents into one stream with EOS after each; uint16 when the vocabulary allows."""
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    pieces = []
    for ids in tokenizer.encode_batch(documents):
        pieces.append(np.asarray(ids + [eos_token_id], dtype=dtype))
    if not pieces:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(pieces)


@dataclass
class TokenSplits:
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

    documents = []
    for file in expand_paths(paths):
        documents.extend(split_documents(read_text_file(file)))
    if not documents:
        raise ValueError(f"the training files contain no text: {', '.join(paths)}")

    order = np.random.default_rng(seed).permutation(len(documents))
    n_validation = int(round(len(documents) * validation_fraction))
    if validation_fraction > 0:
        n_validation = max(n_validation, 1)
    validation_docs = [documents[i] for i in order[:n_validation]]
    train_docs = [documents[i] for i in order[n_validation:]]

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
