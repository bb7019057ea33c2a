"""Token shards: same tokens as the in-memory path, memory-mapped reading, training, and bad input."""

import json

import numpy as np
import pytest

from mambakit.cli import main
from mambakit.tokenizer import load_tokenizer, train_tokenizer
from mambakit.train.data import build_splits, sample_batch
from mambakit.train.shards import INDEX_FILE, TokenShards, open_shards, prepare_shards
from mambakit.train.trainer import TrainConfig, train

JSONL_DOCUMENTS = ["The quick brown fox.", "Line one\n\nstill the same document.", "中文的文档。"]


@pytest.fixture
def mixed_inputs(tmp_path, text_corpus):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "a.txt").write_text(text_corpus.read_text(encoding="utf-8"), encoding="utf-8")
    lines = [json.dumps({"text": text, "id": i}, ensure_ascii=False) for i, text in enumerate(JSONL_DOCUMENTS)]
    (folder / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_shards_equal_in_memory_tokens(mixed_inputs, tokenizer_dir, tmp_path):
    tokenizer = load_tokenizer(tokenizer_dir)
    # 97 tokens per file forces several files and windows that cross file boundaries.
    prepare_shards([str(mixed_inputs)], tokenizer, str(tmp_path / "shards"), validation_fraction=0.1, seed=5,
                   shard_tokens=97)
    shards = open_shards(str(tmp_path / "shards"))
    expected = build_splits(tokenizer, [str(mixed_inputs)], 8, validation_fraction=0.1, seed=5)

    assert len(shards.train.arrays) > 2
    assert all(isinstance(array, np.memmap) for array in shards.train.arrays)
    assert shards.train.dtype == np.uint16
    assert np.array_equal(shards.train[0:len(shards.train)], expected.train)
    assert np.array_equal(shards.validation[0:len(shards.validation)], expected.validation)
    assert shards.index["splits"]["validation"]["documents"] >= 1

    for start in (0, 90, 95, 96, 190):
        assert np.array_equal(shards.train[start:start + 33], expected.train[start:start + 33])


def test_sample_batch_same_from_shards(mixed_inputs, tokenizer_dir, tmp_path):
    import torch

    tokenizer = load_tokenizer(tokenizer_dir)
    prepare_shards([str(mixed_inputs)], tokenizer, str(tmp_path / "shards"), shard_tokens=50)
    shards = open_shards(str(tmp_path / "shards"))
    expected = build_splits(tokenizer, [str(mixed_inputs)], 16, validation_fraction=0.02, seed=0)

    from_shards = sample_batch(shards.train, 4, 16, torch.Generator().manual_seed(1))
    from_memory = sample_batch(expected.train, 4, 16, torch.Generator().manual_seed(1))
    for got, want in zip(from_shards, from_memory):
        assert torch.equal(got, want)


def test_token_shards_reject_strided_slices(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(10, dtype=np.uint16).tofile(path)
    shards = TokenShards([str(path)], [10], np.uint16)
    assert shards[8:20].tolist() == [8, 9]
    with pytest.raises(TypeError, match="step 1"):
        shards[::2]


def test_train_from_shards_via_cli(mixed_inputs, tokenizer_dir, tmp_path, capsys):
    shard_dir = tmp_path / "shards"
    status = main(["data", "prepare", "--data", str(mixed_inputs), "--tokenizer", str(tokenizer_dir),
                   "--out", str(shard_dir), "--validation-fraction", "0.1", "--no-progress"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "uint16"
    assert (shard_dir / "tokenizer" / "tokenizer.json").exists()

    config = TrainConfig(data=[str(shard_dir)], out=str(tmp_path / "run"), d_model=16, n_layer=1, d_state=4,
                         steps=2, batch_size=2, seq_len=16, warmup_steps=1, eval_batches=1, log_every=1)
    summary = train(config, progress=False)
    assert np.isfinite(summary["final_train_loss"])
    assert summary["validation_loss"] is not None


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("binary.txt", b"text\x00\x01\x02", "binary file .*offset 4"),
        ("gbk.txt", "ok 中文".encode("gb18030"), "not valid UTF-8 .*offset 3"),
        ("empty.txt", b"\n\n  \n", "no text"),
        ("missing.jsonl", b'{"text": "fine"}\n{"body": "no text"}\n', "line 2 has no 'text' field"),
        ("broken.jsonl", b'{"text": "fine"}\n{"text": \n', "line 2 is not valid JSON"),
    ],
)
def test_prepare_rejects_bad_input(tmp_path, tokenizer_dir, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        prepare_shards([str(path)], load_tokenizer(tokenizer_dir), str(tmp_path / "shards"))
    assert name in str(error.value)
    assert not (tmp_path / "shards" / INDEX_FILE).exists()


def test_train_rejects_other_tokenizer(mixed_inputs, tokenizer_dir, text_corpus, tmp_path):
    prepare_shards([str(mixed_inputs)], load_tokenizer(tokenizer_dir), str(tmp_path / "shards"))
    other = tmp_path / "other-tokenizer"
    train_tokenizer([str(text_corpus)], 300, out_dir=str(other))
    config = TrainConfig(data=[str(tmp_path / "shards")], out=str(tmp_path / "run"), tokenizer=str(other))
    with pytest.raises(ValueError, match="not the tokenizer the shards .* were prepared with"):
        train(config, progress=False)


def test_truncated_shard_is_reported(mixed_inputs, tokenizer_dir, tmp_path):
    prepare_shards([str(mixed_inputs)], load_tokenizer(tokenizer_dir), str(tmp_path / "shards"))
    shard = tmp_path / "shards" / "train_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ValueError, match="train_00000.bin has .* bytes"):
        open_shards(str(tmp_path / "shards"))
