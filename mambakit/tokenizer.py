"""Tokenizer loading, saving and training on top of the Hugging Face ``tokenizers`` library.

The published ``state-spaces/mamba-*`` checkpoints use the GPT-NeoX tokenizer
(``EleutherAI/gpt-neox-20b``): a byte-level BPE stored as ``tokenizer.json``,
with ``<|endoftext|>`` at id 0 as end-of-text token. :func:`load_tokenizer`
reads that format (or any other ``tokenizer.json``) from a local folder or
file and never downloads anything. :func:`train_tokenizer` trains a
byte-level BPE of the same kind on local text files. Its initial alphabet
contains all 256 byte symbols, so any string, Chinese and emoji included,
can be encoded without unknown tokens.

:class:`Tokenizer` is a thin wrapper that adds the special-token bookkeeping
(end-of-text, beginning-of-text and padding tokens) that the raw
``tokenizers.Tokenizer`` does not keep, and writes a ``tokenizer_config.json``
that ``transformers.AutoTokenizer`` understands.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

# Token strings tried, in order, when no config file names a special token.
# "<|endoftext|>" is the GPT-2/GPT-NeoX end-of-text token, "</s>" the
# SentencePiece/T5/Llama one, "<eos>" the Gemma one.
DEFAULT_EOS_TOKENS = ("<|endoftext|>", "</s>", "<eos>")
DEFAULT_BOS_TOKENS = ("<s>", "<bos>", "<|startoftext|>")
# "<|padding|>" is id 1 in the GPT-NeoX vocabulary.
DEFAULT_PAD_TOKENS = ("<|padding|>", "<pad>", "[PAD]")

# A byte-level BPE needs one base symbol per byte value before any merge.
BYTE_ALPHABET_SIZE = 256

# Files are read and validated in chunks of this many bytes, so a large
# training corpus never has to fit in memory at once.
READ_CHUNK_BYTES = 1 << 20


class Tokenizer:
    """Wrapper over ``tokenizers.Tokenizer`` that tracks the special tokens.

    Args:
        backend: the underlying ``tokenizers.Tokenizer``.
        eos_token: end-of-text token string, or None when the vocabulary has none.
        bos_token: beginning-of-text token string, or None.
        pad_token: padding token string, or None.

    Raises:
        ValueError: when a given token string is not in the vocabulary.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        eos_token: str | None = None,
        bos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        self.backend = backend
        self._special: dict[str, tuple[str | None, int | None]] = {}
        for role, token in (("eos", eos_token), ("bos", bos_token), ("pad", pad_token)):
            self._special[role] = (token, self._lookup_special(role, token))

    def _lookup_special(self, role: str, token: str | None) -> int | None:
        if token is None:
            return None
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"{role}_token {token!r} is not in the tokenizer vocabulary; "
                f"pass a token that the vocabulary contains, or None"
            )
        return token_id

    # ------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added and special tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token(self) -> str | None:
        """End-of-text token string, or None."""
        return self._special["eos"][0]

    @property
    def eos_token_id(self) -> int | None:
        """Id of the end-of-text token, or None."""
        return self._special["eos"][1]

    @property
    def bos_token(self) -> str | None:
        """Beginning-of-text token string, or None."""
        return self._special["bos"][0]

    @property
    def bos_token_id(self) -> int | None:
        """Id of the beginning-of-text token, or None."""
        return self._special["bos"][1]

    @property
    def pad_token(self) -> str | None:
        """Padding token string, or None."""
        return self._special["pad"][0]

    @property
    def pad_token_id(self) -> int | None:
        """Id of the padding token, or None."""
        return self._special["pad"][1]

    # ------------------------------------------------------------------ encoding

    def encode(
        self,
        text: str,
        add_special_tokens: bool = False,
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> list[int]:
        """Encode one string into token ids.

        Args:
            text: the string to encode.
            add_special_tokens: run the backend's post-processor template, if
                it has one. GPT-NeoX and the tokenizers trained here have no
                template, so this changes nothing for them.
            add_bos: prepend ``bos_token_id``.
            add_eos: append ``eos_token_id``.

        Returns:
            list[int] of length n_tokens.

        Raises:
            TypeError: when ``text`` is not a str.
            ValueError: when ``add_bos``/``add_eos`` is set but the token is absent.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}; use encode_batch for a list")
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        return self._add_bos_eos(ids, add_bos, add_eos)

    def encode_batch(
        self,
        texts: Sequence[str],
        add_special_tokens: bool = False,
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> list[list[int]]:
        """Encode several strings (in parallel inside ``tokenizers``).

        Returns:
            list of len(texts) lists of token ids, without padding.
        """
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch expects strings, got {type(text).__name__} at index {index}")
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [self._add_bos_eos(encoding.ids, add_bos, add_eos) for encoding in encodings]

    def _add_bos_eos(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_token_id is None:
                raise ValueError("add_bos=True but this tokenizer has no bos_token; set bos_token or pass add_bos=False")
            ids = [self.bos_token_id, *ids]
        if add_eos:
            if self.eos_token_id is None:
                raise ValueError("add_eos=True but this tokenizer has no eos_token; set eos_token or pass add_eos=False")
            ids = [*ids, self.eos_token_id]
        return ids

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Decode token ids into a string.

        Args:
            ids: token ids, any iterable of ints (a list, a 1-D tensor or array).
            skip_special_tokens: leave special tokens such as ``<|endoftext|>`` out.

        Returns:
            The text. Bytes that do not form complete UTF-8 characters become
            U+FFFD replacement characters.

        Raises:
            ValueError: when an id is outside ``[0, vocab_size)``, because the
                backend would drop it silently.
        """
        id_list = [int(token_id) for token_id in ids]
        vocab_size = self.vocab_size
        for position, token_id in enumerate(id_list):
            if not 0 <= token_id < vocab_size:
                raise ValueError(
                    f"token id {token_id} at position {position} is outside the vocabulary [0, {vocab_size}); "
                    f"a model whose embedding is padded past the vocabulary can sample such ids, "
                    f"so mask the logits above {vocab_size - 1}"
                )
        return self.backend.decode(id_list, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or None when the vocabulary does not contain it."""
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or None when the id is out of range."""
        return self.backend.id_to_token(token_id)

    # ------------------------------------------------------------------ saving

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into a folder.

        The folder can be read back by :func:`load_tokenizer`, by
        ``transformers.AutoTokenizer.from_pretrained`` and by
        ``PreTrainedTokenizerFast(tokenizer_file=...)``.

        Args:
            directory: output folder, created when missing.

        Returns:
            The folder path.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / TOKENIZER_FILE))

        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.eos_token,
            "bos_token": self.bos_token,
            "pad_token": self.pad_token,
            # Without this, transformers would remove spaces before
            # punctuation on decode, which differs from Tokenizer.decode.
            "clean_up_tokenization_spaces": False,
        }
        with open(directory / TOKENIZER_CONFIG_FILE, "w", encoding="utf-8") as handle:
            json.dump(config, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        return directory

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, eos_token={self.eos_token!r}, "
            f"bos_token={self.bos_token!r}, pad_token={self.pad_token!r})"
        )


# ---------------------------------------------------------------------- loading


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer from a local folder or ``tokenizer.json`` file.

    Special tokens come from ``tokenizer_config.json`` and then
    ``special_tokens_map.json`` next to the tokenizer file when present.
    A role that neither file names falls back to the first well-known token
    string that the vocabulary contains (:data:`DEFAULT_EOS_TOKENS`,
    :data:`DEFAULT_BOS_TOKENS`, :data:`DEFAULT_PAD_TOKENS`).

    Args:
        path: a folder that contains ``tokenizer.json``, or the path of a
            tokenizer JSON file. The folder may be a model downloaded from
            the Hugging Face Hub or ModelScope. A ModelScope folder name with
            ``___`` in it is treated like any other folder. Nothing is downloaded.

    Returns:
        The loaded :class:`Tokenizer`.

    Raises:
        FileNotFoundError: when the path or the ``tokenizer.json`` in the folder is missing.
        ValueError: when the file is not a valid ``tokenizers`` JSON file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer path {str(path)!r} does not exist. Pass a local folder that contains "
            f"{TOKENIZER_FILE} or the path of a {TOKENIZER_FILE} file; nothing is downloaded, so copy "
            f"{TOKENIZER_FILE} from the model's repository (e.g. EleutherAI/gpt-neox-20b for the "
            f"state-spaces/mamba-* models) first"
        )

    if path.is_dir():
        tokenizer_file = path / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"folder {str(path)!r} contains no {TOKENIZER_FILE}. Copy {TOKENIZER_FILE} from the "
                f"model's repository into it (e.g. from EleutherAI/gpt-neox-20b for the "
                f"state-spaces/mamba-* models), or train one with mambakit.tokenizer.train_tokenizer"
            )
    else:
        tokenizer_file = path

    try:
        backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    except Exception as error:  # tokenizers raises a plain Exception for parse errors
        raise ValueError(
            f"cannot read {str(tokenizer_file)!r} as a tokenizers JSON file ({error}); "
            f"it must be a {TOKENIZER_FILE} written by the Hugging Face tokenizers library"
        ) from error

    configured = _read_special_token_config(tokenizer_file.parent)
    tokens: dict[str, str | None] = {}
    for role, defaults in (("eos", DEFAULT_EOS_TOKENS), ("bos", DEFAULT_BOS_TOKENS), ("pad", DEFAULT_PAD_TOKENS)):
        tokens[role] = _choose_special_token(backend, role, configured, defaults, tokenizer_file.parent)

    return Tokenizer(backend, eos_token=tokens["eos"], bos_token=tokens["bos"], pad_token=tokens["pad"])


def _read_special_token_config(directory: Path) -> dict[str, str | None]:
    """Read ``<role>_token`` entries from the config files in ``directory``.

    Returns:
        Mapping from role ("eos", "bos", "pad") to token string, or to None
        when a file sets the role to null. Roles that no file mentions are absent.
        ``tokenizer_config.json`` wins over ``special_tokens_map.json``.
    """
    found: dict[str, str | None] = {}
    for file_name in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
        config_path = directory / file_name
        if not config_path.is_file():
            continue
        try:
            with open(config_path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read {str(config_path)!r} as JSON ({error}); fix or delete the file") from error
        if not isinstance(config, dict):
            raise ValueError(f"{str(config_path)!r} must contain a JSON object, found {type(config).__name__}")

        for role in ("eos", "bos", "pad"):
            key = f"{role}_token"
            if role in found or key not in config:
                continue
            value = config[key]
            # transformers stores special tokens either as plain strings or
            # as serialised AddedToken objects {"content": ..., ...}.
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} in {str(config_path)!r} must be a string or null, found {value!r}")
            found[role] = value
    return found


def _choose_special_token(
    backend: tokenizers.Tokenizer,
    role: str,
    configured: dict[str, str | None],
    defaults: Sequence[str],
    directory: Path,
) -> str | None:
    if role in configured:
        token = configured[role]
        if token is None or backend.token_to_id(token) is not None:
            return token
        # A config that names a token missing from the vocabulary is a broken
        # download more often than an intended setting, so fall back instead of failing.
        logger.warning(
            "%s_token %r named in %s is not in the vocabulary; falling back to the well-known token strings",
            role,
            token,
            directory,
        )
    for token in defaults:
        if backend.token_to_id(token) is not None:
            return token
    return None


# ---------------------------------------------------------------------- training


def train_tokenizer(
    files: Sequence[str | os.PathLike[str]],
    vocab_size: int,
    out_dir: str | os.PathLike[str] | None = None,
    special_tokens: Sequence[str] = ("<|endoftext|>",),
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on UTF-8 text files.

    The tokenizer has the GPT-2/GPT-NeoX layout: a ByteLevel pre-tokenizer
    (without an added prefix space) and a ByteLevel decoder. Its initial
    alphabet contains the 256 byte symbols, so every string is encodable.
    Special tokens take ids 0, 1, ... in the given order. The first one is
    the end-of-text token, and ``"<|padding|>"`` or ``"<pad>"``, when given,
    becomes the padding token.

    Chinese text needs no word segmentation: the pre-tokenizer keeps runs of
    letters (CJK characters included) together, and the merges first join the
    three UTF-8 bytes of frequent characters into one token, then frequent
    character pairs.

    Args:
        files: paths of UTF-8 text files.
        vocab_size: maximum vocabulary size, special tokens included; at least
            256 + len(special_tokens). The result is smaller when the text
            supports fewer merges.
        out_dir: when given, the tokenizer is also saved there (see :meth:`Tokenizer.save`).
        special_tokens: special token strings.
        min_frequency: minimum count of a pair for it to be merged.
        show_progress: show the ``tokenizers`` progress bar.

    Returns:
        The trained :class:`Tokenizer`.

    Raises:
        ValueError: empty file list, vocab_size too small, invalid special
            tokens, a file that is not valid UTF-8 or contains NUL bytes, or
            no text at all.
        FileNotFoundError: a file is missing.
    """
    paths = _check_training_files(files)

    special_tokens = list(special_tokens)
    for token in special_tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be unique, got {special_tokens}")

    min_vocab = BYTE_ALPHABET_SIZE + len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < min_vocab:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: a byte-level BPE needs {BYTE_ALPHABET_SIZE} byte "
            f"symbols plus {len(special_tokens)} special token(s), so use at least {min_vocab} "
            f"(a few thousand or more for useful merges)"
        )
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be a positive integer, got {min_frequency!r}")

    # One validation pass first, so a bad file fails with its name and byte
    # offset before any training time is spent.
    total_chars = 0
    for path in paths:
        total_chars += sum(len(text) for text in _iter_utf8_chunks(path))
    if total_chars == 0:
        raise ValueError(f"the training files contain no text: {[str(path) for path in paths]}")

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train([str(path) for path in paths], trainer=trainer)

    eos_token = special_tokens[0] if special_tokens else None
    pad_token = next((token for token in ("<|padding|>", "<pad>") if token in special_tokens), None)
    tokenizer = Tokenizer(backend, eos_token=eos_token, pad_token=pad_token)
    if out_dir is not None:
        tokenizer.save(out_dir)
    return tokenizer


def _check_training_files(files: Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(files, (str, os.PathLike)):
        # A bare string would otherwise be iterated character by character.
        files = [files]
    paths = [Path(file) for file in files]
    if not paths:
        raise ValueError("train_tokenizer got an empty file list; pass at least one UTF-8 text file")
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"training file {str(path)!r} does not exist")
        if not path.is_file():
            raise ValueError(f"training path {str(path)!r} is not a regular file; pass text files, not folders")
    return paths


def _iter_utf8_chunks(path: Path) -> Iterator[str]:
    """Yield the text of a file in chunks, checking that it is UTF-8 text.

    Raises:
        ValueError: naming the file and the byte offset of the first invalid
            UTF-8 sequence or NUL byte (a NUL byte marks a binary file).
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(READ_CHUNK_BYTES)
            final = not chunk

            nul_index = chunk.find(b"\x00")
            if nul_index >= 0:
                raise ValueError(
                    f"training file {str(path)!r} contains a NUL byte at byte offset {offset + nul_index}; "
                    f"it looks like a binary file, so pass only UTF-8 text files"
                )

            # Bytes of a character split across chunks wait in the decoder's
            # buffer and are passed again, in front of the next chunk.
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as error:
                bad_offset = offset - buffered + error.start
                raise ValueError(
                    f"training file {str(path)!r} is not valid UTF-8: byte 0x{error.object[error.start]:02x} "
                    f"at byte offset {bad_offset} ({error.reason}); convert it to UTF-8 first, "
                    f"e.g. with iconv -f GB18030 -t UTF-8"
                ) from error
            if text:
                yield text
            if final:
                return
            offset += len(chunk)
