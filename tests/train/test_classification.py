"""Sequence classification: padding-invariant logits, saving and loading, training to high accuracy."""

import json
import random

import pytest
import torch

from mambakit import Mamba, MambaConfig
from mambakit.models.classification import MambaForSequenceClassification
from mambakit.train.classify_data import read_labelled_jsonl
from mambakit.train.trainer import TrainConfig, train


def tiny_classifier(seed=0):
    torch.manual_seed(seed)
    return MambaForSequenceClassification(MambaConfig(d_model=32, n_layer=2, vocab_size=64, d_state=4), 3).eval()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_padding_does_not_change_logits(backend):
    model = tiny_classifier()
    model.scan_backend = backend
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(1, 64, (length,), generator=generator) for length in (5, 9, 2)]
    longest = max(len(seq) for seq in sequences)
    with torch.no_grad():
        alone = torch.cat([model(seq[None]) for seq in sequences])

        for side in ("right", "left"):
            input_ids = torch.zeros(len(sequences), longest, dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for row, seq in enumerate(sequences):
                span = slice(0, len(seq)) if side == "right" else slice(longest - len(seq), longest)
                input_ids[row, span] = seq
                mask[row, span] = 1
            padded = model(input_ids, attention_mask=mask)
            torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5, msg=side)


def test_backbone_loads_from_language_model(tmp_path):
    torch.manual_seed(0)
    language_model = Mamba(MambaConfig(d_model=32, n_layer=2, vocab_size=64, d_state=4))
    language_model.save_pretrained(tmp_path / "lm")

    model = MambaForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=2, id2label={0: "no", 1: "yes"})
    for name, tensor in language_model.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor), name

    model.save_pretrained(tmp_path / "classifier")
    reloaded = MambaForSequenceClassification.from_pretrained(tmp_path / "classifier")
    assert reloaded.id2label == {0: "no", 1: "yes"}
    input_ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids), model.eval()(input_ids))

    with pytest.raises(ValueError, match="pass num_labels"):
        MambaForSequenceClassification.from_pretrained(tmp_path / "lm")


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")


def sentiment_examples(count, seed):
    rng = random.Random(seed)
    fillers = ["the", "earth", "was", "light", "and", "God", "saw", "day", "night", "明月", "故乡"]
    records = []
    for _ in range(count):
        label = rng.choice(["dark", "light"])
        words = [rng.choice(fillers) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), "darkness" if label == "dark" else "heaven")
        records.append({"text": " ".join(words), "label": label})
    return records


def test_classifier_learns_separable_task(tmp_path, tokenizer_dir):
    write_jsonl(tmp_path / "train.jsonl", sentiment_examples(200, seed=0))
    write_jsonl(tmp_path / "val.jsonl", sentiment_examples(60, seed=1))
    config = TrainConfig(
        task="classify", data=[str(tmp_path / "train.jsonl")], validation_data=str(tmp_path / "val.jsonl"),
        tokenizer=str(tokenizer_dir), out=str(tmp_path / "run"), d_model=32, n_layer=2, d_state=4, steps=40,
        batch_size=16, seq_len=32, lr=5e-3, warmup_steps=4, eval_every=40, log_every=10, checkpoint_every=40,
    )
    summary = train(config, progress=False)

    assert summary["validation_accuracy"] >= 0.9, summary
    model = MambaForSequenceClassification.from_pretrained(summary["model_dir"])
    assert model.id2label == {0: "dark", 1: "light"}


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"text": "a", "label": 1}', '{"text": "b"}'], "line 2 has no 'label' field"),
        (['{"text": "a", "label": 1}', '{"text": "b", "label": "x"}'], "line 2: label 'x' is a str"),
        (['{"text": "a", "label": 1.5}'], "must be a string or an integer"),
        (["[1, 2]"], "line 1 is a JSON list"),
    ],
)
def test_bad_classification_lines(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_labelled_jsonl(str(path))
