"""Sequence classification with a Mamba backbone: a linear head on the last real token's state.

Shape letters: b batch, l length, m ``d_model``, K ``num_labels``.

A causal model's hidden state at the last real token has seen the whole text, so the head reads
that position. ``attention_mask`` marks the real tokens with 1; with left padding the mixers
feed zeros at the padded positions (the state stays untouched), and with right padding the
padded positions come after the one the head reads. Either way the logits equal those of the
unpadded sequence.

A model folder is a language-model folder (``config.json`` in the transformers layout,
``model.safetensors``) whose config adds ``architectures: ["MambaForSequenceClassification"]``,
``num_labels``, ``id2label`` and ``label2id``, and whose weights replace ``lm_head`` with
``classifier.weight`` and ``classifier.bias``.
"""

from __future__ import annotations

import json
import logging
import os

import torch
import torch.nn as nn
import torch.utils.checkpoint
from safetensors.torch import save_file

from mambakit.config import MambaConfig
from mambakit.models.checkpoint import _atomic_write, read_state_dict
from mambakit.models.mamba_lm import Mamba

logger = logging.getLogger(__name__)

ARCHITECTURE = "MambaForSequenceClassification"
_HF_EMBEDDING = "backbone.embeddings.weight"
_OUR_EMBEDDING = "backbone.embedding.weight"


class MambaForSequenceClassification(nn.Module):
    """Mamba backbone plus a linear classifier over the final-norm state of the last real token.

    Args:
        config: the backbone's settings.
        num_labels: number of classes, K.
        id2label: class names (or original int labels) by class id; defaults to the ids.
    """

    def __init__(self, config: MambaConfig, num_labels: int, id2label: dict[int, str | int] | None = None) -> None:
        super().__init__()
        if not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an integer >= 2, got {num_labels!r}")
        self.config = config
        self.num_labels = num_labels
        self.id2label = dict(id2label) if id2label is not None else {i: i for i in range(num_labels)}
        if sorted(self.id2label) != list(range(num_labels)):
            raise ValueError(f"id2label must have the keys 0..{num_labels - 1}, got {sorted(self.id2label)}")

        # The backbone is built inside a language model so it gets the same initialisation.
        self.backbone = Mamba(config).backbone
        self.classifier = nn.Linear(config.d_model, num_labels)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)
        self.scan_backend = "auto"
        self.gradient_checkpointing = False

    @staticmethod
    def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the index of the last 1 in each row of a (b, l) mask, as (b,) int64."""
        mask = attention_mask.to(torch.long)
        if bool((mask.sum(dim=1) == 0).any()):
            raise ValueError("attention_mask has a row without real tokens; every sequence needs at least one")
        positions = torch.arange(mask.shape[1], device=mask.device)
        return (positions * mask).argmax(dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Classify token sequences.

        Args:
            input_ids: (b, l) token ids.
            attention_mask: (b, l), 1 at real tokens and 0 at padding (left or right), or None
                when no sequence is padded.
            backend: scan backend for this call; defaults to ``self.scan_backend``.

        Returns:
            logits (b, K), in the dtype of the head's output.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids shape "
                f"{tuple(input_ids.shape)}; pass one mask entry per token"
            )
        backend = backend or self.scan_backend

        hidden = self.backbone.embedding(input_ids)
        for layer in self.backbone.layers:
            if self.gradient_checkpointing and self.training:
                hidden = torch.utils.checkpoint.checkpoint(
                    layer, hidden, None, attention_mask, backend, use_reentrant=False
                )
            else:
                hidden = layer(hidden, attention_mask=attention_mask, backend=backend)

        if attention_mask is None:
            last = hidden[:, -1]
        else:
            index = self.last_token_index(attention_mask)
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        return self.classifier(self.backbone.norm_f(last))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # Saving and loading

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``config.json`` (transformers layout plus the labels) and ``model.safetensors``."""
        folder = os.fspath(path)
        os.makedirs(folder, exist_ok=True)
        raw = self.config.to_dict("hf")
        raw["architectures"] = [ARCHITECTURE]
        raw["num_labels"] = self.num_labels
        raw["id2label"] = {str(i): label for i, label in self.id2label.items()}
        raw["label2id"] = {str(label): i for i, label in self.id2label.items()}

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        state[_HF_EMBEDDING] = state.pop(_OUR_EMBEDDING)
        weights_path = os.path.join(folder, "model.safetensors")
        _atomic_write(weights_path, lambda file: save_file(state, file, metadata={"format": "pt"}))
        text = json.dumps(raw, indent=2, ensure_ascii=False) + "\n"

        def write_config(file: str) -> None:
            with open(file, "w", encoding="utf-8") as handle:
                handle.write(text)

        _atomic_write(os.path.join(folder, "config.json"), write_config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        num_labels: int | None = None,
        id2label: dict[int, str | int] | None = None,
    ) -> "MambaForSequenceClassification":
        """Load a classifier folder, or a language-model folder's backbone with a new head.

        Args:
            path: a folder saved by ``save_pretrained``, or any folder ``Mamba.from_pretrained``
                loads (original or transformers layout); its LM head is dropped.
            num_labels: classes of a new head; required for a language-model folder, and must
                match when given for a classifier folder.
            id2label: class names of a new head.
        """
        folder = os.fspath(path)
        raw = _read_config(folder)
        if ARCHITECTURE not in (raw.get("architectures") or []):
            if num_labels is None:
                raise ValueError(f"{folder} is a language model; pass num_labels to put a new classifier head on it")
            language_model = Mamba.from_pretrained(folder)
            model = cls(language_model.config, num_labels, id2label)
            model.backbone = language_model.backbone
            logger.info("loaded the backbone of %s with a new %d-class head", folder, num_labels)
            return model.train()

        saved_labels = int(raw["num_labels"])
        if num_labels is not None and num_labels != saved_labels:
            raise ValueError(f"{folder} classifies {saved_labels} labels, but num_labels={num_labels} was passed")
        labels = {int(i): label for i, label in raw["id2label"].items()}
        config = MambaConfig.from_pretrained(folder)
        with torch.device("meta"):
            model = cls(config, saved_labels, labels)
        model = model.to_empty(device="cpu")
        state = {k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(folder).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"weights in {folder} do not match its config.json: missing {', '.join(missing) or 'none'}; "
                f"unexpected {', '.join(unexpected) or 'none'}"
            )
        return model.eval()


def _read_config(folder: str) -> dict:
    file = os.path.join(folder, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"config.json not found in {folder}; pass a model folder")
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)
