"""Sequence classification for the trainer (``--task classify``); see ``lm_task`` for the methods.

Training data is one or more JSONL files of ``{"text": ..., "label": ...}``. Validation data
comes from ``--validation-data``, or else ``validation_fraction`` of the training examples is
held out. Batches draw examples at random with replacement, one stream per micro-batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mambakit.config import MambaConfig
from mambakit.models.classification import MambaForSequenceClassification
from mambakit.train.classify_data import (
    encode_examples,
    example_batches,
    label_vocabulary,
    read_labelled_jsonl,
    sample_examples,
)
from mambakit.train.data import split_document_order
from mambakit.train.documents import expand_paths
from mambakit.train.lm_task import model_config_for

if TYPE_CHECKING:
    from mambakit.train.trainer import TrainConfig

logger = logging.getLogger(__name__)


class ClassificationTask:
    """Classify texts with a linear head on the state of the last real token."""

    def __init__(self, config: TrainConfig, tokenizer) -> None:
        self.config = config
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)

        texts, labels = [], []
        files = expand_paths(config.data)
        for file in files:
            file_texts, file_labels = read_labelled_jsonl(file)
            texts += file_texts
            labels += file_labels
        source = ", ".join(files)
        self.classes = label_vocabulary(labels, source)
        examples = encode_examples(tokenizer, texts, labels, self.classes, config.seq_len, source)

        if config.validation_data:
            validation_texts, validation_labels = read_labelled_jsonl(config.validation_data)
            self.train = examples
            self.validation = encode_examples(
                tokenizer, validation_texts, validation_labels, self.classes, config.seq_len, config.validation_data
            )
        else:
            validation_order, train_order = split_document_order(len(examples), config.validation_fraction, config.seed)
            self.train, self.validation = examples.subset(train_order), examples.subset(validation_order)
        if len(self.train) == 0:
            raise ValueError(f"no training examples are left in {source}; lower --validation-fraction")
        logger.info(
            "data: %d training and %d validation examples, %d labels",
            len(self.train), len(self.validation), len(self.classes),
        )

    @property
    def id2label(self) -> dict:
        return dict(enumerate(self.classes))

    def new_model(self, tokenizer) -> torch.nn.Module:
        """Build the classifier of a fresh run: a backbone from ``--init-from`` or a new one, and a new head."""
        if self.config.init_from:
            from mambakit.train.finetune import load_classifier

            model = load_classifier(
                self.config.init_from, tokenizer, len(self.classes), self.id2label, self.config.seed
            )
            if list(model.id2label.values()) != self.classes:
                raise ValueError(
                    f"{self.config.init_from} classifies the labels {list(model.id2label.values())}, but the data has "
                    f"{self.classes}; start from a language model or a classifier of the same labels"
                )
            return model
        config = model_config_for(self.config, tokenizer)
        return MambaForSequenceClassification(config, len(self.classes), self.id2label)

    def restore_model(self, state: dict) -> torch.nn.Module:
        saved = state["task"]["labels"]
        if saved != self.classes:
            raise ValueError(
                f"--resume: the checkpoint classifies {saved}, but the data now has the labels {self.classes}; "
                "resume with the original data or choose a new --out folder"
            )
        config = MambaConfig(**{k: v for k, v in state["model_config"].items() if k != "layout"})
        return MambaForSequenceClassification(config, len(self.classes), self.id2label)

    def checkpoint_extras(self) -> dict:
        return {"labels": list(self.classes)}

    def sample(self, generator: torch.Generator):
        """Draw (input_ids, attention_mask, labels): (batch, length), (batch, length), (batch,) int64."""
        return sample_examples(self.train, self.config.batch_size, generator, self.pad_id)

    @staticmethod
    def tokens(batch) -> int:
        return int(batch[1].sum())

    def loss(self, model, batch) -> torch.Tensor:
        input_ids, mask, labels = batch
        return F.cross_entropy(model(input_ids, attention_mask=mask).float(), labels)

    @torch.no_grad()
    def evaluate(self, model, device: torch.device, autocast) -> dict | None:
        """Return the validation loss and accuracy over all validation examples, or None without any."""
        if len(self.validation) == 0:
            return None
        model.eval()
        total_loss, correct = 0.0, 0
        for input_ids, mask, labels in example_batches(self.validation, self.config.batch_size, self.pad_id):
            input_ids, mask, labels = input_ids.to(device), mask.to(device), labels.to(device)
            with autocast():
                logits = model(input_ids, attention_mask=mask).float()
            total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == labels).sum())
        model.train()
        count = len(self.validation)
        return {"validation_loss": total_loss / count, "validation_accuracy": correct / count}

    def export(self, model, tokenizer, folder: str) -> None:
        model.save_pretrained(folder)
        tokenizer.save(folder)
