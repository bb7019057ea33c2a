"""Text-level generation: streaming, stop strings, EOS, batches and bad input."""

import pytest

from model_factory import make_model
from mambakit.generation import generate, generate_ids, stream_generate
from mambakit.tokenizer import train_tokenizer

TEXT = "床前明月光，疑是地上霜。举头望明月，低头思故乡。🙂 The quick brown fox jumps over the lazy dog.\n"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT * 50, encoding="utf-8")
    return train_tokenizer([str(corpus)], 300, out_dir=str(folder))


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(vocab_size=8 * ((tokenizer.vocab_size + 7) // 8), unpadded_vocab_size=tokenizer.vocab_size)


def test_stream_pieces_join_to_result(model, tokenizer):
    pieces = []
    text = generate(model, tokenizer, "床前", max_new_tokens=30, seed=1, stream=pieces.append)
    assert "".join(pieces) == text
    assert len(pieces) > 1


def test_streamed_pieces_hold_whole_characters(model, tokenizer):
    # Decoding every piece alone must not produce replacement characters the full text lacks.
    full = "".join(piece for _, piece in stream_generate(model, tokenizer, "举头", max_new_tokens=40, seed=5))
    for _, piece in stream_generate(model, tokenizer, "举头", max_new_tokens=40, seed=5):
        if "\ufffd" not in full:
            assert "\ufffd" not in piece


def test_stop_string_cuts_output(model, tokenizer):
    text = generate(model, tokenizer, "The", max_new_tokens=40, temperature=0)
    assert len(text) > 6
    stop = text[3:6]
    stopped = generate(model, tokenizer, "The", max_new_tokens=40, temperature=0, stop=[stop])
    assert stopped == text[: text.index(stop)]


def test_eos_ends_text(model, tokenizer):
    first_id = generate_ids(model, tokenizer.encode("The"), max_new_tokens=1, temperature=0)[0]
    # Declaring the first generated token EOS must end the text before it.
    stopped = generate(model, tokenizer, "The", max_new_tokens=10, temperature=0, eos_token_id=first_id)
    assert stopped == ""


def test_batch_of_prompts_equals_single(model, tokenizer):
    prompts = ["床前明月光", "The quick brown fox", "🙂"]
    batch = generate(model, tokenizer, prompts, max_new_tokens=12, temperature=0)
    assert batch == [generate(model, tokenizer, p, max_new_tokens=12, temperature=0) for p in prompts]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt="x", temperature=-1.0), "temperature"),
        (dict(prompt="x", top_p=0.0), "top_p"),
        (dict(prompt="x", repetition_penalty=0.0), "repetition_penalty"),
        (dict(prompt="x", stop=[""]), "stop"),
        (dict(prompt=["a", "b"], stream=print), "single prompt"),
    ],
)
def test_bad_arguments(model, tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, max_new_tokens=3, **kwargs)


def test_tokenizer_larger_than_model_is_caught(tokenizer):
    small = make_model(vocab_size=64)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        generate(small, tokenizer, "床前明月光", max_new_tokens=2)
