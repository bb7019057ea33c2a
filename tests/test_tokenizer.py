"""Tests for mambakit.tokenizer: training, loading, saving and special tokens."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from mambakit.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。"
ENGLISH = "In the beginning God created the heaven and the earth. And the earth was without form, and void."
EMOJI = "😀🎉👍🏽 家庭👨‍👩‍👧 旗帜🇨🇳"
MIXED = "Mamba 模型 reads 中文 and English 😀 together."

ROUND_TRIP_CASES = [CHINESE, ENGLISH, EMOJI, MIXED, "生僻字：龘靐齉", "tabs\tand\nnewlines  double  spaces", ""]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    lines = [CHINESE, ENGLISH, EMOJI, MIXED] * 30
    # Characters in varied orders, as in real text, so pairs of bytes inside
    # a character are more frequent than pairs across two characters.
    rng = random.Random(0)
    chars = [char for char in CHINESE if char not in "，。"]
    lines += ["".join(rng.sample(chars, 8)) for _ in range(200)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus_file: Path) -> Tokenizer:
    return train_tokenizer([corpus_file], vocab_size=600)


def build_neox_style_tokenizer_json(directory: Path, corpus_file: Path) -> Path:
    """Write a tokenizer.json laid out like EleutherAI/gpt-neox-20b's.

    Byte-level BPE with an NFC normaliser, <|endoftext|> at id 0 and
    <|padding|> at id 1, and no tokenizer_config.json.
    """
    backend = tokenizers.Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train([str(corpus_file)], trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    backend.save(str(path))
    return path


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize("text", ROUND_TRIP_CASES)
def test_trained_round_trip_exact(trained: Tokenizer, text: str) -> None:
    ids = trained.encode(text)
    assert trained.decode(ids) == text


def test_trained_has_no_unknown_bytes(trained: Tokenizer) -> None:
    # Characters never seen in training still encode through byte tokens.
    unseen = "Ω≈ç√∫ 𝄞 ゆ 한국어"
    assert trained.decode(trained.encode(unseen)) == unseen


def test_common_chinese_chars_single_tokens(trained: Tokenizer) -> None:
    for char in "床前明月光疑是地上霜":
        ids = trained.encode(char)
        assert len(ids) == 1, f"{char!r} encodes to {len(ids)} tokens"


def test_trained_special_token_ids(trained: Tokenizer) -> None:
    assert trained.eos_token == "<|endoftext|>"
    assert trained.eos_token_id == 0
    assert trained.bos_token_id is None
    assert trained.pad_token_id is None
    assert trained.decode([0, *trained.encode("月")]) == "月"
    assert trained.decode([0], skip_special_tokens=False) == "<|endoftext|>"


def test_trained_vocab_size_counts_specials(trained: Tokenizer) -> None:
    assert 256 + 1 <= trained.vocab_size <= 600
    assert trained.vocab_size == trained.backend.get_vocab_size(with_added_tokens=True)


def test_encode_no_specials_by_default(trained: Tokenizer) -> None:
    ids = trained.encode(ENGLISH)
    assert trained.eos_token_id not in ids
    with_eos = trained.encode(ENGLISH, add_eos=True)
    assert with_eos == [*ids, trained.eos_token_id]


def test_encode_add_bos_without_bos_raises(trained: Tokenizer) -> None:
    with pytest.raises(ValueError, match="no bos_token"):
        trained.encode("x", add_bos=True)


def test_encode_batch_matches_encode(trained: Tokenizer) -> None:
    texts = [CHINESE, ENGLISH, EMOJI]
    assert trained.encode_batch(texts) == [trained.encode(text) for text in texts]
    assert trained.encode_batch(texts, add_eos=True)[1][-1] == trained.eos_token_id


def test_decode_rejects_out_of_range_id(trained: Tokenizer) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trained.decode([trained.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        trained.decode([-1])


def test_train_with_pad_and_several_specials(corpus_file: Path) -> None:
    tokenizer = train_tokenizer([corpus_file], vocab_size=400, special_tokens=("<|endoftext|>", "<|padding|>", "<s>"))
    assert tokenizer.eos_token_id == 0
    assert tokenizer.pad_token == "<|padding|>"
    assert tokenizer.pad_token_id == 1
    assert tokenizer.token_to_id("<s>") == 2


def test_train_writes_out_dir(corpus_file: Path, tmp_path: Path) -> None:
    train_tokenizer([corpus_file], vocab_size=300, out_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    assert (tmp_path / "tok" / "tokenizer_config.json").is_file()


def test_train_empty_file_list_raises() -> None:
    with pytest.raises(ValueError, match="empty file list"):
        train_tokenizer([], vocab_size=1000)


def test_train_missing_file_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_tokenizer([missing], vocab_size=1000)


def test_train_empty_files_raise(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="contain no text"):
        train_tokenizer([empty], vocab_size=1000)


def test_train_vocab_too_small_raises(corpus_file: Path) -> None:
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer([corpus_file], vocab_size=256)
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer([corpus_file], vocab_size=257, special_tokens=("<|endoftext|>", "<pad>"))


def test_train_invalid_utf8_reports_offset(tmp_path: Path) -> None:
    bad = tmp_path / "gbk.txt"
    good_prefix = "好的".encode("utf-8")
    bad.write_bytes(good_prefix + "中文".encode("gbk"))
    with pytest.raises(ValueError) as error:
        train_tokenizer([bad], vocab_size=1000)
    message = str(error.value)
    assert "gbk.txt" in message
    assert f"byte offset {len(good_prefix)}" in message


def test_train_invalid_utf8_offset_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks split characters across reads, so the offset must count
    # the bytes buffered from the previous chunk.
    import mambakit.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "READ_CHUNK_BYTES", 4)
    prefix = "中文字符测试".encode("utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(prefix + b"\xe4\xbd" + b"abc")
    with pytest.raises(ValueError, match=f"byte offset {len(prefix)}"):
        train_tokenizer([bad], vocab_size=1000)


def test_train_truncated_utf8_at_end_raises(tmp_path: Path) -> None:
    prefix = "你好".encode("utf-8")
    bad = tmp_path / "truncated.txt"
    bad.write_bytes(prefix + b"\xe4")
    with pytest.raises(ValueError, match=f"byte offset {len(prefix)}"):
        train_tokenizer([bad], vocab_size=1000)


def test_train_binary_file_raises(tmp_path: Path) -> None:
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(ValueError, match=r"model\.bin.*NUL byte at byte offset 3"):
        train_tokenizer([binary], vocab_size=1000)


def test_train_directory_path_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        train_tokenizer([tmp_path], vocab_size=1000)


# ---------------------------------------------------------------------- saving and loading


def test_save_then_load_folder(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path / "saved")
    loaded = load_tokenizer(tmp_path / "saved")
    assert loaded.vocab_size == trained.vocab_size
    assert loaded.eos_token_id == trained.eos_token_id
    assert loaded.pad_token_id == trained.pad_token_id
    assert loaded.bos_token_id == trained.bos_token_id
    for text in ROUND_TRIP_CASES:
        assert loaded.encode(text) == trained.encode(text)


def test_save_writes_special_tokens_config(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == "<|endoftext|>"
    assert config["bos_token"] is None
    assert config["pad_token"] is None


def test_load_from_file_path(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.encode(MIXED) == trained.encode(MIXED)
    assert loaded.eos_token_id == 0


def test_load_missing_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError) as error:
        load_tokenizer(missing)
    message = str(error.value)
    assert "does-not-exist" in message
    assert "EleutherAI/gpt-neox-20b" in message


def test_load_folder_without_json_raises(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError) as error:
        load_tokenizer(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message
    assert "tokenizer.json" in message


def test_load_invalid_json_raises(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_load_neox_format_folder(corpus_file: Path, tmp_path: Path) -> None:
    build_neox_style_tokenizer_json(tmp_path / "gpt-neox", corpus_file)
    tokenizer = load_tokenizer(tmp_path / "gpt-neox")
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == 0
    assert tokenizer.pad_token_id == 1
    assert tokenizer.bos_token_id is None
    ids = tokenizer.encode(MIXED)
    assert 0 not in ids
    assert tokenizer.decode(ids) == MIXED
    assert tokenizer.decode(tokenizer.encode(EMOJI)) == EMOJI


def test_load_modelscope_style_folder_name(corpus_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "state-spaces___mamba-130m-hf"
    build_neox_style_tokenizer_json(folder, corpus_file)
    assert load_tokenizer(folder).eos_token_id == 0
    assert load_tokenizer(str(folder)).eos_token_id == 0


def test_load_reads_tokenizer_config(corpus_file: Path, tmp_path: Path) -> None:
    build_neox_style_tokenizer_json(tmp_path, corpus_file)
    config = {
        "eos_token": {"content": "<|endoftext|>", "lstrip": False},
        "bos_token": "<|endoftext|>",
        "pad_token": None,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.eos_token_id == 0
    assert tokenizer.bos_token_id == 0
    # An explicit null wins over the well-known "<|padding|>".
    assert tokenizer.pad_token_id is None
    assert tokenizer.encode("a", add_bos=True)[0] == 0


def test_load_reads_special_tokens_map(corpus_file: Path, tmp_path: Path) -> None:
    build_neox_style_tokenizer_json(tmp_path, corpus_file)
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|padding|>", "pad_token": "<|endoftext|>"}), encoding="utf-8"
    )
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.eos_token_id == 1
    assert tokenizer.pad_token_id == 0


def test_load_unknown_config_token_falls_back(corpus_file: Path, tmp_path: Path) -> None:
    build_neox_style_tokenizer_json(tmp_path, corpus_file)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}), encoding="utf-8")
    assert load_tokenizer(tmp_path).eos_token == "<|endoftext|>"


def test_wrapper_rejects_unknown_special_token(trained: Tokenizer) -> None:
    with pytest.raises(ValueError, match="not in the tokenizer vocabulary"):
        Tokenizer(trained.backend, eos_token="<nope>")


def test_saved_folder_loads_in_transformers(trained: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    trained.save(tmp_path)

    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto.eos_token_id == 0
    assert auto(MIXED)["input_ids"] == trained.encode(MIXED)
    assert auto.decode(trained.encode(CHINESE)) == CHINESE

    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert fast(EMOJI)["input_ids"] == trained.encode(EMOJI)
