"""Language modelling for the trainer: token data, the model, next-token loss and validation.

A task gives the training loop in ``trainer`` everything that depends on what is learned.
``sample`` draws one micro-batch from a random stream, ``loss`` computes its mean loss, and
``evaluate`` returns validation metrics. ``new_model``, ``restore_model`` and ``export`` build,
rebuild and publish the model. ``classify_task`` implements the same methods.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mambakit.config import MambaConfig
from mambakit.models.mamba_lm import Mamba
from mambakit.train.data import build_splits, sample_batch, validation_batches
from mambakit.train.shards import ShardSet, check_tokenizer_matches

if TYPE_CHECKING:
    from mambakit.train.trainer import TrainConfig

logger = logging.getLogger(__name__)


def model_config_for(config: TrainConfig, tokenizer) -> MambaConfig:
    """Return the settings of a new model with the run's shape and the tokenizer's vocabulary."""
    return MambaConfig(
        d_model=config.d_model,
        n_layer=config.n_layer,
        d_state=config.d_state,
        expand=config.expand,
        vocab_size=8 * math.ceil(tokenizer.vocab_size / 8),
        unpadded_vocab_size=tokenizer.vocab_size,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


class LanguageModelTask:
    """Next-token prediction on random windows of a token stream (text files or token shards)."""

    def __init__(self, config: TrainConfig, tokenizer, tokenizer_source: str, shards: ShardSet | None) -> None:
        self.config = config
        if shards is not None:
            check_tokenizer_matches(shards, tokenizer, tokenizer_source)
            if len(shards.train) < config.seq_len + 1:
                raise ValueError(
                    f"the training split in {shards.folder} has {len(shards.train)} tokens, fewer than one window "
                    f"of seq_len + 1 = {config.seq_len + 1}; add text or lower --seq-len"
                )
            self.train_tokens, self.validation_tokens = shards.train, shards.validation
            logger.info(
                "data: token shards in %s, %d train tokens, %d validation tokens",
                shards.folder, len(shards.train), len(shards.validation),
            )
        else:
            splits = build_splits(tokenizer, config.data, config.seq_len, config.validation_fraction, config.seed)
            self.train_tokens, self.validation_tokens = splits.train, splits.validation

    def new_model(self, tokenizer) -> torch.nn.Module:
        """Build the model of a fresh run: from ``--init-from``, or newly initialised."""
        if self.config.init_from:
            from mambakit.train.finetune import load_language_model

            return load_language_model(self.config.init_from, tokenizer, self.config.seed)
        return Mamba(model_config_for(self.config, tokenizer))

    def restore_model(self, state: dict) -> torch.nn.Module:
        """Build an uninitialised model with the settings saved in checkpoint ``state``."""
        return Mamba(MambaConfig(**{k: v for k, v in state["model_config"].items() if k != "layout"}))

    def checkpoint_extras(self) -> dict:
        return {}

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (inputs, targets), each (batch, seq_len) int64 on the CPU."""
        return sample_batch(self.train_tokens, self.config.batch_size, self.config.seq_len, generator)

    @staticmethod
    def tokens(batch) -> int:
        return batch[0].numel()

    def loss(self, model, batch) -> torch.Tensor:
        """Return the mean next-token cross-entropy of a batch, in fp32."""
        inputs, targets = batch
        logits = model(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def evaluate(self, model, device: torch.device, autocast) -> dict | None:
        """Return validation loss and perplexity over fixed windows, or None without validation data.

        ``autocast`` is a function returning the forward pass's precision context.
        """
        config = self.config
        if len(self.validation_tokens) < config.seq_len + 1:
            return None
        model.eval()
        total, count = 0.0, 0
        batches = validation_batches(self.validation_tokens, config.batch_size, config.seq_len, config.eval_batches)
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast():
                logits = model(inputs)
            total += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
            count += targets.numel()
        model.train()
        loss = total / count
        return {"validation_loss": loss, "validation_perplexity": math.exp(min(loss, 50))}

    def export(self, model, tokenizer, folder: str) -> None:
        """Write the final weights (transformers layout) and the tokenizer to ``folder``."""
        model.save_pretrained(folder, layout="hf")
        tokenizer.save(folder)
