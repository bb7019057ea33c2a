"""Start training from a saved model folder, fitting its embedding to the tokenizer.

Vocabulary rule, applied by ``fit_vocabulary``:

* a tokenizer no larger than the embedding needs no change: ids past the tokenizer's vocabulary
  are padding rows, never produced by the tokenizer and never sampled;
* a larger tokenizer grows the embedding to ``8 * ceil(tokenizer vocabulary / 8)`` rows. Every
  row from the model's old real vocabulary (``unpadded_vocab_size``) up becomes the mean of the
  old real rows plus Gaussian noise. The noise has ``NEW_ROW_NOISE`` times the standard deviation
  of the old rows' entries and comes from a generator seeded with the run's seed. A tied LM
  head is the embedding and grows with it, and an untied head grows by the same rule applied
  to its own rows.

The mean row makes a new token's first logits an average of the known tokens' logits rather
than arbitrary values. The noise keeps the new rows distinct, so they get different gradients.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# Standard deviation of the noise on new rows, relative to the spread of the old rows' entries.
NEW_ROW_NOISE = 0.01
PAD_MULTIPLE = 8


def padded_rows(vocab_size: int) -> int:
    """Return ``vocab_size`` rounded up to a multiple of 8."""
    return PAD_MULTIPLE * math.ceil(vocab_size / PAD_MULTIPLE)


def _grow_rows(weight: torch.Tensor, old_real: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """Return ``weight`` (V, m) grown to (rows, m); rows from ``old_real`` up are mean + noise."""
    real = weight[:old_real].float()
    grown = torch.empty(rows, weight.shape[1], dtype=weight.dtype)
    grown[:old_real] = weight[:old_real]
    noise = torch.randn(rows - old_real, weight.shape[1], generator=generator) * (NEW_ROW_NOISE * real.std())
    grown[old_real:] = (real.mean(dim=0) + noise).to(weight.dtype)
    return grown


@torch.no_grad()
def fit_vocabulary(model: nn.Module, tokenizer, seed: int) -> None:
    """Fit a model with ``backbone.embedding`` (and maybe ``lm_head``) to ``tokenizer``, in place.

    Also sets the config's ``unpadded_vocab_size`` and special-token ids from the tokenizer.
    """
    config = model.config
    needed = tokenizer.vocab_size
    if needed > config.vocab_size:
        old_rows, old_real = config.vocab_size, config.usable_vocab_size
        rows = padded_rows(needed)
        generator = torch.Generator().manual_seed(seed)
        embedding = model.backbone.embedding
        embedding.weight = nn.Parameter(_grow_rows(embedding.weight, old_real, rows, generator))
        embedding.num_embeddings = rows

        head = getattr(model, "lm_head", None)
        if head is not None:
            if config.tie_embeddings:
                head.weight = embedding.weight
            else:
                head.weight = nn.Parameter(_grow_rows(head.weight, old_real, rows, generator))
            head.out_features = rows
        config.vocab_size = rows
        logger.warning(
            "resized the embedding from %d to %d rows for a tokenizer of %d tokens: rows %d and up are the mean "
            "of the first %d rows plus noise (std %.3g times their spread)",
            old_rows, rows, needed, old_real, old_real, NEW_ROW_NOISE,
        )
    config.unpadded_vocab_size = needed
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = tokenizer.pad_token_id


def load_language_model(folder: str, tokenizer, seed: int):
    """Load ``folder`` with ``Mamba.from_pretrained`` in fp32 and fit it to ``tokenizer``."""
    from mambakit.models.mamba_lm import Mamba

    model = Mamba.from_pretrained(folder)
    fit_vocabulary(model, tokenizer, seed)
    return model.train()


def load_classifier(folder: str, tokenizer, num_labels: int, id2label: dict, seed: int):
    """Load the backbone of ``folder`` under a new ``num_labels``-class head, fitted to ``tokenizer``."""
    from mambakit.models.classification import MambaForSequenceClassification

    model = MambaForSequenceClassification.from_pretrained(folder, num_labels=num_labels, id2label=id2label)
    fit_vocabulary(model, tokenizer, seed)
    return model.train()
