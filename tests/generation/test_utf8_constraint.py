"""UTF-8 logits constraint: tables, prompt state, sampling with it, and tokenizer detection."""

import codecs
import itertools
import random

import pytest
import tokenizers
import torch
from model_factory import make_model
from tokenizers import decoders, models, pre_tokenizers

from mambakit.generation import generate, generate_ids, iter_generate_ids
from mambakit.generation.sampling import SamplingConfig
from mambakit.generation.utf8 import (
    NEEDED_BYTES,
    STATE_COUNT,
    Utf8Constraint,
    Utf8Tables,
    build_utf8_constraint,
    byte_level_alphabet,
    state_after_bytes,
    token_bytes_from_tokenizer,
)
from mambakit.tokenizer import Tokenizer, train_tokenizer

TEXT = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。🙂🚀😀 春眠不觉晓，处处闻啼鸟。naïve café 🎉\n"

# One pending prefix per automaton state: state 3 uses 0xF1, whose second byte may be any of 0x80-0xBF.
STATE_PREFIXES = [b"", b"\xc3", b"\xe4", b"\xf1", b"\xe0", b"\xed", b"\xf0", b"\xf4"]

# Continuation bytes that reach both ends of every second-byte range, so a prefix
# that any continuation completes is completed by one of these.
PROBE_CONTINUATIONS = (0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF)


def reference_step(prefix: bytes, token: bytes) -> tuple[bool, int | None]:
    """Return (allowed, next state) for ``token`` after ``prefix``, using Python's UTF-8 codec."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(prefix + token, final=False)
    except UnicodeDecodeError:
        return False, None
    pending = decoder.getstate()[0]
    if not pending:
        return True, 0

    # CPython buffers a surrogate start such as ED A0 without complaint, so
    # check that some continuation completes the pending bytes.
    length = {0xC: 2, 0xD: 2, 0xE: 3, 0xF: 4}[pending[0] >> 4]
    missing = length - len(pending)
    completable = False
    for tail in itertools.product(PROBE_CONTINUATIONS, repeat=missing):
        try:
            (pending + bytes(tail)).decode("utf-8")
        except UnicodeDecodeError:
            continue
        completable = True
        break
    if not completable:
        return False, None

    if len(pending) == 1 and pending[0] in (0xE0, 0xED, 0xF0, 0xF4):
        return True, STATE_PREFIXES.index(bytes(pending))
    return True, missing


def check_tables_against_reference(token_bytes: list[bytes]) -> None:
    tables = Utf8Tables.from_token_bytes(token_bytes)
    for state, prefix in enumerate(STATE_PREFIXES):
        for token_id, token in enumerate(token_bytes):
            expected_allowed, expected_next = reference_step(prefix, token)
            assert bool(tables.allowed[state, token_id]) == expected_allowed, (state, token)
            if expected_allowed:
                assert int(tables.next_state[state, token_id]) == expected_next, (state, token)


def test_tables_ascii_only_at_boundary():
    tables = Utf8Tables.from_token_bytes([b"a", b"Hello", b" ", b"\n"])
    assert tables.allowed[0].all()
    assert not tables.allowed[1:].any()
    assert (tables.next_state[0] == 0).all()


def test_tables_every_split_of_characters():
    # Every contiguous piece of 2-, 3- and 4-byte characters, alone and after ASCII.
    pieces = set()
    for char in ("é", "中", "€", "🙂", "😀", "\u0800", "\U00010000", "\U0010ffff", "\ud7ff"):
        data = char.encode("utf-8")
        for start in range(len(data)):
            for end in range(start + 1, len(data) + 1):
                pieces.add(data[start:end])
                pieces.add(b"x" + data[start:end])
                pieces.add(data[start:end] + b"y")
    check_tables_against_reference(sorted(pieces))


def test_tables_split_character_chain():
    tables = Utf8Tables.from_token_bytes([b"\xf0\x9f", b"\x99", b"\x82", b"\xf0", b"\x9f\x99\x82"])
    assert int(tables.next_state[0, 0]) == 2
    assert int(tables.next_state[2, 1]) == 1
    assert int(tables.next_state[1, 2]) == 0
    assert int(tables.next_state[0, 3]) == 6
    assert bool(tables.allowed[6, 4])
    assert int(tables.next_state[6, 4]) == 0
    assert not tables.allowed[0, 1]
    # A continuation byte leaves a 4-byte character two bytes short.
    assert int(tables.next_state[3, 2]) == 2
    # A new lead byte cannot interrupt an unfinished character.
    assert not tables.allowed[2, 3]


def test_tables_reject_invalid_bytes():
    invalid = [b"\xc0\x80", b"\xc1\xbf", b"\xc0", b"\xc1", *(bytes([byte]) for byte in range(0xF5, 0x100))]
    invalid += [b"\xe0\x80", b"\xed\xa0", b"\xf0\x80", b"\xf4\x90", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]
    tables = Utf8Tables.from_token_bytes(invalid)
    assert not tables.allowed.any()


def test_tables_reject_lone_continuation():
    tables = Utf8Tables.from_token_bytes([b"\x80", b"\xbf", b"a\x80", b"\xc3\xa9\xa9"])
    assert not tables.allowed[0].any()
    # A continuation byte that finishes the pending character is fine, a second one is not.
    assert bool(tables.allowed[1, 0])
    assert bool(tables.allowed[1, 1])
    assert not tables.allowed[1, 2]
    assert not tables.allowed[1, 3]


def test_tables_second_byte_ranges_across_tokens():
    tokens = [b"\x80", b"\x9f", b"\xa0", b"\xbf", b"\x8f", b"\x90"]
    tables = Utf8Tables.from_token_bytes(tokens)
    expected = {
        4: [False, False, True, True, False, False],  # after E0: A0-BF
        5: [True, True, False, False, True, True],  # after ED: 80-9F
        6: [False, True, True, True, False, True],  # after F0: 90-BF
        7: [True, False, False, False, True, False],  # after F4: 80-8F
    }
    for state, row in expected.items():
        assert tables.allowed[state].tolist() == row, state


def test_tables_single_bytes_match_codec():
    check_tables_against_reference([bytes([byte]) for byte in range(256)])


def test_tables_random_tokens_match_codec():
    rng = random.Random(0)
    # Mostly bytes near the UTF-8 boundaries, so most tokens mix leads and continuations.
    choices = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2]
    choices += [0xDF, 0xE0, 0xE4, 0xED, 0xEF, 0xF0, 0xF3, 0xF4, 0xF5]
    tokens = [bytes(rng.choice(choices) for _ in range(rng.randint(1, 6))) for _ in range(1500)]
    check_tables_against_reference(tokens)


def test_tables_special_and_missing_tokens():
    tables = Utf8Tables.from_token_bytes([b"<eos>", None, b"\x80"], special_ids=[0])
    assert tables.allowed[:, 0].all()
    assert tables.next_state[:, 0].tolist() == list(range(STATE_COUNT))
    assert not tables.allowed[:, 1].any()
    assert tables.next_state[:, 1].tolist() == list(range(STATE_COUNT))


def test_tables_special_id_out_of_range():
    with pytest.raises(ValueError, match="special token id 5"):
        Utf8Tables.from_token_bytes([b"a"], special_ids=[5])


def test_needed_bytes_per_state():
    assert NEEDED_BYTES == (0, 1, 2, 3, 2, 2, 3, 3)
    tables = Utf8Tables.from_token_bytes([b"a"])
    constraint = Utf8Constraint(tables, list(range(STATE_COUNT)))
    assert constraint.needed_bytes.tolist() == list(NEEDED_BYTES)


def test_state_after_bytes_resynchronises():
    assert state_after_bytes(b"ab") == 0
    assert state_after_bytes("中".encode()[:2]) == 1
    assert state_after_bytes(b"\xe4") == 2
    assert state_after_bytes(b"\xf0") == 6
    # An invalid byte ends the unfinished character and starts over.
    assert state_after_bytes(b"\xe4A") == 0
    assert state_after_bytes(b"\xe4\xe4") == 2
    assert state_after_bytes(b"\x80\x80\x80\x80") == 0


def test_disallowed_token_next_state_resynchronises():
    tables = Utf8Tables.from_token_bytes([b"A", b"\xe4"])
    assert not tables.allowed[2, 0]
    assert int(tables.next_state[2, 0]) == 0
    assert not tables.allowed[2, 1]
    assert int(tables.next_state[2, 1]) == 2


def test_byte_level_alphabet_is_bijection():
    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert alphabet["Ġ"] == 0x20
    assert alphabet["Ċ"] == 0x0A
    assert alphabet["A"] == 0x41


def test_mask_sets_disallowed_to_minus_inf():
    tables = Utf8Tables.from_token_bytes([b"a", b"\x80", b"\xe4", b"<eos>"], special_ids=[3])
    constraint = Utf8Constraint(tables, [0, 1])
    masked = constraint.mask(torch.zeros(2, 6))
    inf = float("-inf")
    assert masked[0].tolist() == [0.0, inf, 0.0, 0.0, inf, inf]
    assert masked[1].tolist() == [inf, 0.0, inf, 0.0, inf, inf]


def test_mask_all_blocked_row_unconstrained(caplog):
    tables = Utf8Tables.from_token_bytes([b"a", b"b"])
    constraint = Utf8Constraint(tables, [0, 2])
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    masked = constraint.mask(logits)
    assert masked[0].tolist() == [1.0, 2.0]
    assert masked[1].tolist() == [3.0, 4.0]
    assert "without the UTF-8 constraint" in caplog.text


def test_update_advances_states():
    tables = Utf8Tables.from_token_bytes([b"\xe4", b"\xb8", b"\xad"])
    constraint = Utf8Constraint(tables, [0])
    for token, expected in ((0, 2), (1, 1), (2, 0)):
        constraint.update(torch.tensor([token]))
        assert constraint.states.tolist() == [expected]
    # Ids past the tables leave the state unchanged.
    constraint.update(torch.tensor([7]))
    assert constraint.states.tolist() == [0]


def test_constraint_rejects_bad_arguments():
    tables = Utf8Tables.from_token_bytes([b"a"])
    with pytest.raises(ValueError, match="states must lie in"):
        Utf8Constraint(tables, [9])
    constraint = Utf8Constraint(tables, [0, 0])
    with pytest.raises(ValueError, match="batch=2"):
        constraint.mask(torch.zeros(3, 1))


# ---------------------------------------------------------------------- real tokenizers


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    # A vocabulary barely above the 256 byte symbols leaves most characters split into bytes.
    folder = tmp_path_factory.mktemp("utf8_tokenizer")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT * 30, encoding="utf-8")
    return train_tokenizer([str(corpus)], 300, out_dir=str(folder))


@pytest.fixture(scope="module")
def small_model(small_tokenizer):
    vocab = small_tokenizer.vocab_size
    return make_model(seed=3, vocab_size=8 * ((vocab + 7) // 8), unpadded_vocab_size=vocab)


def test_byte_level_token_bytes_match_decode(small_tokenizer):
    token_bytes, special_ids = token_bytes_from_tokenizer(small_tokenizer)
    assert special_ids == {small_tokenizer.eos_token_id}
    assert len(token_bytes) == small_tokenizer.vocab_size
    ids = small_tokenizer.encode(TEXT)
    assert b"".join(token_bytes[i] for i in ids).decode("utf-8") == TEXT
    # The vocabulary does split characters, or the sampling test below proves nothing.
    assert any(state_after_bytes(token_bytes[i]) != 0 for i in ids)


def test_prompt_ending_mid_character(small_tokenizer):
    ids = small_tokenizer.encode("山🙂")
    token_bytes, _ = token_bytes_from_tokenizer(small_tokenizer)
    prefix_states = [state_after_bytes(b"".join(token_bytes[i] for i in ids[:n])) for n in range(len(ids) + 1)]
    cut = next(n for n, state in enumerate(prefix_states) if state != 0)
    prompt = ids[:cut]
    expected = prefix_states[cut]

    constraint = build_utf8_constraint(small_tokenizer, [prompt, ids])
    assert constraint.states.tolist() == [expected, 0]
    masked = constraint.mask(torch.zeros(2, small_tokenizer.vocab_size))
    allowed_ids = torch.isfinite(masked[0]).nonzero().flatten().tolist()
    for token_id in allowed_ids:
        if token_id == small_tokenizer.eos_token_id:
            continue
        # Only tokens that continue the pending character are left.
        assert token_bytes[token_id][0] & 0xC0 == 0x80, token_bytes[token_id]


def bytes_needed_after(pending: bytes) -> int:
    """Return how many bytes the unfinished character ``pending`` still needs."""
    if not pending:
        return 0
    if pending[0] >= 0xF0:
        length = 4
    elif pending[0] >= 0xE0:
        length = 3
    else:
        length = 2
    return length - len(pending)


def sample_with_constraint(model, tokenizer, constraint, prompts, steps, seed):
    sampling = SamplingConfig(temperature=1.5)
    outputs = [[] for _ in prompts]
    for step in iter_generate_ids(model, prompts, steps, sampling, None, seed, constraint):
        for row, token in enumerate(step.tokens.tolist()):
            outputs[row].append(token)
    return outputs


def test_random_model_sampling_stays_valid(small_model, small_tokenizer):
    token_bytes, _ = token_bytes_from_tokenizer(small_tokenizer)
    prompts = [small_tokenizer.encode(text) for text in ("白日", "🙂", "café", "黄河入海")]
    eos = small_tokenizer.eos_token_id

    for seed in range(3):
        constraint = build_utf8_constraint(small_tokenizer, prompts)
        outputs = sample_with_constraint(small_model, small_tokenizer, constraint, prompts, 150, seed)
        for row, ids in enumerate(outputs):
            data = b"".join(token_bytes[i] for i in ids if i != eos)
            decoder = codecs.getincrementaldecoder("utf-8")()
            decoder.decode(data, final=False)
            pending = decoder.getstate()[0]
            assert int(constraint.needed_bytes[row]) == bytes_needed_after(pending), (seed, row)

            text = small_tokenizer.decode([i for i in ids if i != eos])
            complete = text[:-1] if pending else text
            assert "\ufffd" not in complete, (seed, row, text)


def test_random_model_without_constraint_breaks_utf8(small_model, small_tokenizer):
    # The same sampling without the constraint does produce U+FFFD, so the test above can fail.
    prompts = [small_tokenizer.encode(text) for text in ("白日", "🙂", "café", "黄河入海")]
    outputs = sample_with_constraint(small_model, small_tokenizer, None, prompts, 150, 0)
    texts = [small_tokenizer.decode(ids) for ids in outputs]
    assert any("\ufffd" in text[:-1] for text in texts)


def test_generate_uses_constraint_by_default(small_model, small_tokenizer):
    prompts = ["白日", "🙂", "黄河"]
    for seed in range(3):
        texts = generate(small_model, small_tokenizer, prompts, max_new_tokens=60, temperature=1.5, seed=seed)
        for text in texts:
            assert "\ufffd" not in text[:-1], (seed, text)


def test_generate_valid_utf8_off_matches_ids(small_model, small_tokenizer):
    prompt = small_tokenizer.encode("白日")
    ids = generate_ids(small_model, prompt, max_new_tokens=30, temperature=0)
    text = generate(
        small_model, small_tokenizer, "白日", max_new_tokens=30, temperature=0, valid_utf8=False
    )
    assert text == small_tokenizer.decode(ids)


def test_constraint_keeps_eos_allowed(small_tokenizer):
    constraint = build_utf8_constraint(small_tokenizer, [[5]], always_allowed_ids=[7, None])
    for state in range(STATE_COUNT):
        assert bool(constraint.allowed[state, 7])
        assert bool(constraint.allowed[state, small_tokenizer.eos_token_id])


def sample_like_cli(model, tokenizer, prompts, seed, constraint, max_new_tokens=60):
    """Sample with the CLI's default settings and return the new ids of each prompt, EOS left out."""
    eos = tokenizer.eos_token_id
    sampling = SamplingConfig(temperature=0.8, top_p=0.9, repetition_penalty=1.1)
    outputs = [[] for _ in prompts]
    for step in iter_generate_ids(model, prompts, max_new_tokens, sampling, eos, seed, constraint):
        for row, (token, done) in enumerate(zip(step.tokens.tolist(), step.finished_before.tolist())):
            if not done and token != eos:
                outputs[row].append(token)
    return outputs


def test_bundled_model_output_is_valid():
    from mambakit.cli import default_model_path
    from mambakit.models.mamba_lm import Mamba
    from mambakit.tokenizer import load_tokenizer

    path = default_model_path()
    model = Mamba.from_pretrained(path)
    tokenizer = load_tokenizer(path)
    token_bytes, _ = token_bytes_from_tokenizer(tokenizer)
    prompts = [tokenizer.encode(text) for text in ("白日依山尽", "春眠不觉晓", "The weather today")]

    # One prompt per call: a padded batch takes the slower masked scan path on CPU.
    for prompt, seed in itertools.product(prompts, (0, 1)):
        constraint = build_utf8_constraint(tokenizer, [prompt], always_allowed_ids=[tokenizer.eos_token_id])
        ids = sample_like_cli(model, tokenizer, [prompt], seed, constraint)[0]

        # A strict decode raises on any invalid byte, and only the unfinished tail stays pending.
        decoder = codecs.getincrementaldecoder("utf-8")()
        decoder.decode(b"".join(token_bytes[i] for i in ids), final=False)
        text = tokenizer.decode(ids)
        complete = text[:-1] if decoder.getstate()[0] else text
        assert "\ufffd" not in complete, (seed, tokenizer.decode(prompt), text)

    # Without the constraint, seed 0 breaks a character early in the first prompt's continuation.
    ids = sample_like_cli(model, tokenizer, prompts[:1], 0, None, max_new_tokens=20)[0]
    assert "\ufffd" in tokenizer.decode(ids)[:-1]


# ---------------------------------------------------------------------- other tokenizers


def test_wordpiece_tokenizer_has_no_constraint():
    vocab = {"[UNK]": 0, "[SEP]": 1, "白": 2, "日": 3, "##日": 4, "hello": 5}
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    tokenizer = Tokenizer(backend, eos_token="[SEP]")
    assert token_bytes_from_tokenizer(tokenizer) is None
    assert build_utf8_constraint(tokenizer, [[2, 3]]) is None


def test_metaspace_tokenizer_has_no_constraint():
    vocab = {"<unk>": 0, "▁白": 1, "日": 2}
    backend = tokenizers.Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    assert build_utf8_constraint(backend, [[1, 2]]) is None


def test_byte_fallback_tokenizer_uses_byte_tokens():
    vocab = {"<unk>": 0, "</s>": 1, **{f"<0x{byte:02X}>": 2 + byte for byte in range(256)}, "▁山": 258}
    backend = tokenizers.Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer = Tokenizer(backend, eos_token="</s>")

    token_bytes, special_ids = token_bytes_from_tokenizer(tokenizer)
    assert token_bytes[2 + 0xE4] == b"\xe4"
    assert token_bytes[258] == "▁山".encode()
    assert 1 in special_ids

    constraint = build_utf8_constraint(tokenizer, [[258, 2 + 0xE4]])
    assert constraint.states.tolist() == [2]
    masked = constraint.mask(torch.zeros(1, len(token_bytes)))
    allowed_ids = torch.isfinite(masked[0]).nonzero().flatten().tolist()
    assert allowed_ids == [1, *range(2 + 0x80, 2 + 0xC0)]
