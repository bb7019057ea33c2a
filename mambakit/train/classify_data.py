"""Labelled examples for sequence classification: JSONL reading, label ids, padded batches.

Each line of the input is a JSON object with a ``text`` string and a ``label``, either a string
or an integer (the two kinds cannot be mixed). Labels map to class ids in sorted order, so the
integer labels 0..K-1 keep their values as ids.

A text is encoded, cut to its first ``seq_len - 1`` tokens, and given an EOS token at the end,
so the classifier always reads the state at the same end-of-text token. Batches are padded on
the right to their longest sequence, with an attention mask of 1 at real tokens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from mambakit.train.documents import iter_jsonl_records

logger = logging.getLogger(__name__)

Label = str | int


@dataclass
class LabelledExamples:
    """Encoded examples: token ids per text and class ids, (n,) int64."""

    token_ids: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.token_ids)

    def subset(self, indices) -> "LabelledExamples":
        return LabelledExamples([self.token_ids[i] for i in indices], self.labels[np.asarray(indices, dtype=np.int64)])


def read_labelled_jsonl(path: str) -> tuple[list[str], list[Label]]:
    """Read ``(texts, labels)`` from a JSONL file of ``{"text": ..., "label": ...}`` objects."""
    texts, labels = [], []
    kind = None
    for line_number, record in iter_jsonl_records(path):
        for field in ("text", "label"):
            if field not in record:
                raise ValueError(
                    f"{path} line {line_number} has no {field!r} field (keys: {', '.join(sorted(record)) or 'none'}); "
                    'classification data needs {"text": ..., "label": ...} on every line'
                )
        text, label = record["text"], record["label"]
        if not isinstance(text, str):
            raise ValueError(f"{path} line {line_number}: 'text' must be a string, got {type(text).__name__}")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ValueError(
                f"{path} line {line_number}: 'label' must be a string or an integer, got {label!r}"
            )
        label_kind = type(label)
        if kind is None:
            kind = label_kind
        elif label_kind is not kind:
            raise ValueError(
                f"{path} line {line_number}: label {label!r} is a {label_kind.__name__}, but earlier labels are "
                f"{kind.__name__}s; use one kind of label in a file"
            )
        texts.append(text)
        labels.append(label)
    if not texts:
        raise ValueError(f"{path} contains no examples; write one JSON object per line")
    return texts, labels


def label_vocabulary(labels: list[Label], path: str) -> list[Label]:
    """Return the sorted distinct labels; the position of a label is its class id."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"{path} has only the label {classes[0]!r}; classification needs at least two labels")
    return classes


def encode_examples(
    tokenizer, texts: list[str], labels: list[Label], classes: list[Label], seq_len: int, path: str
) -> LabelledExamples:
    """Encode texts (truncated to ``seq_len - 1`` tokens, then EOS) and map labels to class ids."""
    ids_of = {label: index for index, label in enumerate(classes)}
    unknown = sorted({label for label in labels if label not in ids_of}, key=str)
    if unknown:
        raise ValueError(
            f"{path} has labels that the training data does not: {', '.join(map(repr, unknown))}; "
            f"known labels are {', '.join(map(repr, classes))}"
        )
    eos = tokenizer.eos_token_id
    keep = seq_len - 1 if eos is not None else seq_len
    token_ids = []
    for ids in tokenizer.encode_batch(texts):
        ids = ids[:keep] + ([eos] if eos is not None else [])
        if not ids:
            raise ValueError(f"{path} has an empty text and the tokenizer has no EOS token to stand for it")
        token_ids.append(np.asarray(ids, dtype=np.int64))
    return LabelledExamples(token_ids, np.asarray([ids_of[label] for label in labels], dtype=np.int64))


def pad_batch(sequences: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences to the longest; returns input_ids and attention_mask, (b, l) int64 each."""
    length = max(len(seq) for seq in sequences)
    input_ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def sample_examples(
    examples: LabelledExamples, batch_size: int, generator: torch.Generator, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` examples with replacement; returns input_ids, attention_mask (b, l), labels (b,)."""
    picks = torch.randint(0, len(examples), (batch_size,), generator=generator).tolist()
    input_ids, mask = pad_batch([examples.token_ids[i] for i in picks], pad_id)
    return input_ids, mask, torch.from_numpy(examples.labels[picks])


def example_batches(examples: LabelledExamples, batch_size: int, pad_id: int):
    """Yield every example once, in order, as (input_ids, attention_mask, labels) batches."""
    for first in range(0, len(examples), batch_size):
        chunk = range(first, min(first + batch_size, len(examples)))
        input_ids, mask = pad_batch([examples.token_ids[i] for i in chunk], pad_id)
        yield input_ids, mask, torch.from_numpy(examples.labels[first:first + len(chunk)])
