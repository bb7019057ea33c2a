"""Training loop: learning, exact resume, atomic checkpoints and bad input."""

import json

import pytest
import torch

from mambakit import Mamba
from mambakit.train import checkpointing
from mambakit.train import trainer as trainer_module
from mambakit.train.trainer import TrainConfig, learning_rate, train

TEXT = (
    "In the beginning God created the heaven and the earth.\n\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n\n"
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n\n"
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n\n"
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n\n"
)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT * 20, encoding="utf-8")
    return path


def small_config(corpus, out, **overrides):
    settings = dict(
        data=[str(corpus)], out=str(out), vocab_size=320, d_model=32, n_layer=2, d_state=4,
        steps=8, batch_size=4, seq_len=32, lr=5e-3, warmup_steps=2, eval_every=4, eval_batches=2,
        log_every=1, checkpoint_every=4, validation_fraction=0.1, seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def read_losses(out):
    records = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
    return [r["loss"] for r in records if "loss" in r]


def test_loss_decreases_on_real_text(corpus, tmp_path):
    summary = train(small_config(corpus, tmp_path / "run", steps=40, eval_every=40), progress=False)
    losses = summary["train_losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    model = Mamba.from_pretrained(summary["model_dir"])
    assert model.config.unpadded_vocab_size <= 320
    assert (tmp_path / "run" / "model" / "tokenizer.json").exists()


def test_resume_equals_uninterrupted_run(corpus, tmp_path, monkeypatch):
    straight = train(small_config(corpus, tmp_path / "straight"), progress=False)

    # Run the same 8-step schedule, but crash right after the step-4 checkpoint.
    class Crash(Exception):
        pass

    original_save = trainer_module.save_checkpoint

    def save_then_crash(state, folder, step, keep_last=3):
        path = original_save(state, folder, step, keep_last)
        if step == 4:
            raise Crash
        return path

    resumed_dir = tmp_path / "resumed"
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(small_config(corpus, resumed_dir), progress=False)
    monkeypatch.undo()
    train(small_config(corpus, resumed_dir), resume=True, progress=False)

    assert read_losses(resumed_dir) == straight["train_losses"]
    straight_model = Mamba.from_pretrained(tmp_path / "straight" / "model")
    resumed_model = Mamba.from_pretrained(resumed_dir / "model")
    for key, value in straight_model.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key


def test_failed_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    checkpointing.save_checkpoint({"step": 1, "value": torch.ones(3)}, str(folder), 1)

    def broken_save(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        checkpointing.save_checkpoint({"step": 2}, str(folder), 2)
    monkeypatch.undo()

    assert [step for step, _ in checkpointing.list_checkpoints(str(folder))] == [1]
    assert [p.name for p in folder.iterdir()] == ["step_00000001.pt"]
    assert checkpointing.load_latest_checkpoint(str(folder))["step"] == 1


def test_keep_last_checkpoints(tmp_path):
    for step in range(1, 6):
        checkpointing.save_checkpoint({"step": step}, str(tmp_path), step, keep_last=2)
    assert [step for step, _ in checkpointing.list_checkpoints(str(tmp_path))] == [4, 5]


def test_resume_with_changed_settings_is_rejected(corpus, tmp_path):
    train(small_config(corpus, tmp_path / "run", steps=4), progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(small_config(corpus, tmp_path / "run", steps=8, lr=1e-2), resume=True, progress=False)


def test_schedule_warmup_and_cosine():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, config) == pytest.approx(0.1)
    assert learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(55, config) == pytest.approx(0.55)
    assert learning_rate(100, config) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "content, message",
    [(b"\x00\x01\x02binary", "binary"), ("中文".encode("gb18030"), "not valid UTF-8"), (b"\n\n  \n", "no text")],
)
def test_bad_training_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    tokenizer_dir = tmp_path / "tok"
    good = tmp_path / "good.txt"
    good.write_text(TEXT, encoding="utf-8")
    from mambakit.tokenizer import train_tokenizer

    train_tokenizer([str(good)], 300, out_dir=str(tokenizer_dir))
    config = small_config(path, tmp_path / "run", tokenizer=str(tokenizer_dir))
    with pytest.raises(ValueError, match=message):
        train(config, progress=False)


def test_missing_data_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        train(small_config(tmp_path / "absent.txt", tmp_path / "run"), progress=False)
