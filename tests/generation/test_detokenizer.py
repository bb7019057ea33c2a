"""Tests for StreamingDetokenizer over byte-level BPE, WordPiece, Metaspace and ByteFallback tokenizers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from mambakit.generation.detokenizer import StreamingDetokenizer
from mambakit.tokenizer import train_tokenizer

REPLACEMENT = "\ufffd"

CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
ENGLISH = "Hello, world! The quick brown fox jumps over the lazy dog."
EMOJI = "😀🎉👍🏽 家庭👨‍👩‍👧 旗帜🇨🇳"
MIXED = "混合 mixed 文本 text 😀 emoji, 中文标点：“引号”、《书名》……"
RARE = "生僻字龘靐齉 and 𝄞 clef"

TRAINING_TEXT = [CHINESE, ENGLISH, EMOJI, MIXED, "In the beginning God created the heaven and the earth."] * 5
STREAM_TEXTS = [CHINESE, ENGLISH, EMOJI, MIXED, RARE, "\n".join([CHINESE, ENGLISH, EMOJI, MIXED])]


def build_byte_level_small(tmp_path_factory: pytest.TempPathFactory):
    # A small vocabulary leaves most Chinese characters and all emoji split
    # into byte tokens, which is the case the detokenizer exists for.
    path = tmp_path_factory.mktemp("bl") / "train.txt"
    path.write_text("\n".join(TRAINING_TEXT), encoding="utf-8")
    return train_tokenizer([path], vocab_size=300, min_frequency=1)


def build_byte_level_large() -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    return backend


def build_wordpiece() -> tokenizers.Tokenizer:
    # BERT layout: the decoder joins tokens with spaces and glues "##" pieces.
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[SEP]"], show_progress=False)
    backend.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    return backend


def build_unigram_metaspace() -> tokenizers.Tokenizer:
    # SentencePiece layout: "▁" marks spaces, and the decoder drops the
    # space in front of the first token.
    backend = tokenizers.Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=150, special_tokens=["<unk>", "</s>"], unk_token="<unk>", show_progress=False
    )
    backend.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    return backend


def build_byte_fallback() -> tokenizers.Tokenizer:
    """Build a Llama-style BPE: Metaspace, <0xNN> byte-fallback tokens, and a
    Replace/ByteFallback/Fuse/Strip decoder chain."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    # A small alphabet leaves many characters to the byte fallback.
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "</s>"], limit_alphabet=60, show_progress=False)
    backend.train_from_iterator(TRAINING_TEXT, trainer=trainer)

    spec = json.loads(backend.to_str())
    vocab = spec["model"]["vocab"]
    first_byte_id = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = first_byte_id + byte
    spec["model"]["byte_fallback"] = True
    spec["model"]["unk_token"] = "<unk>"
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    return tokenizers.Tokenizer.from_str(json.dumps(spec))


TOKENIZER_NAMES = ["byte_level_small", "byte_level_large", "wordpiece", "unigram_metaspace", "byte_fallback"]


@pytest.fixture(scope="module")
def all_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {
        "byte_level_small": build_byte_level_small(tmp_path_factory),
        "byte_level_large": build_byte_level_large(),
        "wordpiece": build_wordpiece(),
        "unigram_metaspace": build_unigram_metaspace(),
        "byte_fallback": build_byte_fallback(),
    }


def encode_ids(tokenizer, text: str) -> list[int]:
    encoded = tokenizer.encode(text)
    return encoded if isinstance(encoded, list) else encoded.ids


def stream(tokenizer, ids: list[int], **kwargs) -> tuple[list[str], str]:
    detokenizer = StreamingDetokenizer(tokenizer, **kwargs)
    chunks = [detokenizer.push(token_id) for token_id in ids]
    tail = detokenizer.flush()
    assert detokenizer.text == "".join(chunks) + tail
    return chunks, tail


# ---------------------------------------------------------------------- exact streaming


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
@pytest.mark.parametrize("text", STREAM_TEXTS, ids=["chinese", "english", "emoji", "mixed", "rare", "all"])
@pytest.mark.parametrize("context_tokens", [1, 3, 8])
def test_stream_equals_full_decode(all_tokenizers: dict, name: str, text: str, context_tokens: int) -> None:
    tokenizer = all_tokenizers[name]
    ids = encode_ids(tokenizer, text)
    expected = tokenizer.decode(ids)
    assert REPLACEMENT not in expected

    chunks, tail = stream(tokenizer, ids, context_tokens=context_tokens)

    assert "".join(chunks) + tail == expected
    emitted = ""
    for index, chunk in enumerate(chunks):
        assert REPLACEMENT not in chunk, f"chunk {index} {chunk!r} contains U+FFFD"
        emitted += chunk
        assert expected.startswith(emitted), f"chunk {index} {chunk!r} is not a prefix continuation"
    assert REPLACEMENT not in tail


def test_small_vocab_splits_characters(all_tokenizers: dict) -> None:
    # Guards the tests above: the small byte-level tokenizer must really
    # split characters across tokens, or the hold-back path is never run.
    tokenizer = all_tokenizers["byte_level_small"]
    for text in (CHINESE, EMOJI):
        lone = [tokenizer.decode([token_id]) for token_id in encode_ids(tokenizer, text)]
        assert any(REPLACEMENT in piece for piece in lone)


def test_byte_fallback_uses_byte_tokens(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_fallback"]
    pieces = [tokenizer.id_to_token(token_id) for token_id in encode_ids(tokenizer, CHINESE)]
    assert any(piece.startswith("<0x") for piece in pieces)


def test_chunks_hold_whole_characters(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_level_small"]
    ids = encode_ids(tokenizer, CHINESE + EMOJI)
    chunks, _ = stream(tokenizer, ids)
    assert "" in chunks  # some tokens complete no character
    for chunk in chunks:
        assert chunk.encode("utf-8").decode("utf-8") == chunk


# ---------------------------------------------------------------------- end of stream


def test_flush_mid_character_gives_replacement(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_level_small"]
    # "龘" is not in the training text, so it is encoded as 3 byte tokens.
    ids = encode_ids(tokenizer, "月龘")
    assert tokenizer.decode(ids[-3:]) == "龘"
    cut = ids[:-1]

    detokenizer = StreamingDetokenizer(tokenizer)
    chunks = [detokenizer.push(token_id) for token_id in cut]
    tail = detokenizer.flush()

    assert "".join(chunks) == "月"
    assert tail == REPLACEMENT
    assert detokenizer.text == tokenizer.decode(cut)


def test_byte_fallback_flush_mid_character(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_fallback"]
    ids = encode_ids(tokenizer, "明月龘")
    assert tokenizer.id_to_token(ids[-1]).startswith("<0x")
    cut = ids[:-1]

    chunks, tail = stream(tokenizer, cut)

    assert "".join(chunks) == "明月"
    assert tail
    assert set(tail) == {REPLACEMENT}


def test_flush_complete_stream_is_empty(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_level_large"]
    detokenizer = StreamingDetokenizer(tokenizer)
    for token_id in encode_ids(tokenizer, ENGLISH):
        detokenizer.push(token_id)
    assert detokenizer.flush() == ""
    assert detokenizer.text == ENGLISH


def test_push_after_flush_continues_text(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_level_large"]
    detokenizer = StreamingDetokenizer(tokenizer)
    for token_id in encode_ids(tokenizer, "明月"):
        detokenizer.push(token_id)
    detokenizer.flush()
    for token_id in encode_ids(tokenizer, "光"):
        detokenizer.push(token_id)
    detokenizer.flush()
    assert detokenizer.text == "明月光"
    assert detokenizer.token_count == len(encode_ids(tokenizer, "明月")) + len(encode_ids(tokenizer, "光"))


def test_reset_clears_text(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_level_large"]
    detokenizer = StreamingDetokenizer(tokenizer)
    for token_id in encode_ids(tokenizer, CHINESE):
        detokenizer.push(token_id)
    detokenizer.reset()
    assert detokenizer.text == ""
    assert detokenizer.token_count == 0
    assert detokenizer.flush() == ""


# ---------------------------------------------------------------------- replacement characters in the input


@pytest.mark.parametrize("text", ["a\ufffdb", "结尾\ufffd", "\ufffd\ufffd\ufffd\ufffd\ufffd开头"])
def test_real_replacement_chars_emitted(all_tokenizers: dict, text: str) -> None:
    tokenizer = all_tokenizers["byte_level_small"]
    ids = encode_ids(tokenizer, text)
    chunks, tail = stream(tokenizer, ids)
    assert "".join(chunks) + tail == text


def test_random_byte_level_streams(all_tokenizers: dict) -> None:
    # Random ids produce invalid UTF-8, lone continuation bytes and special
    # tokens, and the chunks must still add up to decode(all_ids).
    tokenizer = all_tokenizers["byte_level_small"]
    rng = random.Random(0)
    for trial in range(200):
        ids = [rng.randrange(tokenizer.vocab_size) for _ in range(rng.randint(1, 60))]
        expected = tokenizer.decode(ids)
        for context_tokens in (1, 4):
            chunks, tail = stream(tokenizer, ids, context_tokens=context_tokens)
            assert "".join(chunks) + tail == expected, f"trial {trial}, ids {ids}"


@pytest.mark.parametrize("name", ["wordpiece", "unigram_metaspace"])
def test_random_streams_with_specials(all_tokenizers: dict, name: str) -> None:
    # Skipped special tokens at the start of the window must not drop the
    # space in front of the next visible token.
    tokenizer = all_tokenizers[name]
    vocab_size = tokenizer.get_vocab_size()
    rng = random.Random(1)
    for trial in range(200):
        ids = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 60))]
        expected = tokenizer.decode(ids)
        for context_tokens in (1, 3):
            chunks, tail = stream(tokenizer, ids, context_tokens=context_tokens)
            assert "".join(chunks) + tail == expected, f"trial {trial}, ids {ids}"


# ---------------------------------------------------------------------- special tokens


def test_special_tokens_skipped_by_default(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_level_small"]
    ids = [*encode_ids(tokenizer, "明月"), tokenizer.eos_token_id, *encode_ids(tokenizer, "光")]
    chunks, tail = stream(tokenizer, ids)
    assert "".join(chunks) + tail == "明月光"


def test_special_tokens_kept_when_asked(all_tokenizers: dict) -> None:
    tokenizer = all_tokenizers["byte_level_small"]
    ids = [*encode_ids(tokenizer, "明月"), tokenizer.eos_token_id]
    chunks, tail = stream(tokenizer, ids, skip_special_tokens=False)
    assert "".join(chunks) + tail == "明月<|endoftext|>"


# ---------------------------------------------------------------------- cost and inputs


class RecordingTokenizer:
    """Wrap a tokenizer and record the length of every decode call."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.lengths: list[int] = []

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self.inner.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("name", ["byte_level_small", "byte_fallback", "unigram_metaspace"])
def test_decode_window_stays_bounded(all_tokenizers: dict, name: str) -> None:
    inner = all_tokenizers[name]
    ids = encode_ids(inner, "\n".join(STREAM_TEXTS)) * 20
    recorder = RecordingTokenizer(inner)
    context_tokens = 4

    chunks, tail = stream(recorder, ids, context_tokens=context_tokens)

    assert "".join(chunks) + tail == inner.decode(ids)
    assert len(ids) > 1000
    assert max(recorder.lengths) <= 4 * context_tokens + 16
    # A few decodes per token on average, not one per earlier token.
    assert len(recorder.lengths) <= 4 * len(ids)


def test_push_accepts_tensor_scalars(all_tokenizers: dict) -> None:
    torch = pytest.importorskip("torch")
    tokenizer = all_tokenizers["byte_level_small"]
    ids = encode_ids(tokenizer, CHINESE)
    detokenizer = StreamingDetokenizer(tokenizer)
    for token_id in torch.tensor(ids):
        detokenizer.push(token_id)
    detokenizer.flush()
    assert detokenizer.text == CHINESE


def test_works_with_transformers_tokenizer(all_tokenizers: dict, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = all_tokenizers["byte_level_small"]
    tokenizer.save(tmp_path)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    ids = hf_tokenizer(MIXED)["input_ids"]
    chunks, tail = stream(hf_tokenizer, ids)
    assert "".join(chunks) + tail == MIXED
    assert all(REPLACEMENT not in chunk for chunk in chunks)


def test_invalid_context_tokens_raises(all_tokenizers: dict) -> None:
    with pytest.raises(ValueError, match="context_tokens"):
        StreamingDetokenizer(all_tokenizers["byte_level_small"], context_tokens=0)
