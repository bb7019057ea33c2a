"""Token shards: a corpus tokenised once into memory-mapped files, for training without loading it.

``mambakit data prepare`` writes a folder::

    OUT/index.json              format, dtype, vocabulary, split sizes and shard files
    OUT/train_00000.bin ...     training tokens, raw little-endian uint16 or uint32
    OUT/validation_00000.bin    validation tokens
    OUT/tokenizer/              the tokenizer the ids belong to

Each split is one token stream, cut into files of at most ``shard_tokens`` tokens, so a
document may continue in the next file. The documents are split and ordered exactly as
``data.build_splits`` does with the same seed and validation fraction, so training from shards
draws the same windows as training from the text files.

Preparing streams the input: tokens go to a temporary file in input order, then the documents are
copied into the shards in shuffled order. Memory use is one batch of documents plus 8 bytes per
document; disk use peaks at twice the token data.
"""

from __future__ import annotations

import array
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from mambakit.train.data import split_document_order, token_dtype
from mambakit.train.documents import iter_documents

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
SHARD_FORMAT = "mambakit-token-shards"
SHARD_FORMAT_VERSION = 1
TOKENIZER_FOLDER = "tokenizer"
# 2**28 tokens are 512 MiB in uint16: few files for a large corpus, small enough to copy around.
DEFAULT_SHARD_TOKENS = 1 << 28
# Documents per tokenizer call; the tokenizers library encodes one batch on all cores.
ENCODE_BATCH_DOCUMENTS = 1024


def tokenizer_fingerprint(tokenizer) -> str:
    """Return a SHA-256 of the tokenizer's vocabulary (token -> id), which fixes what each id means."""
    vocabulary = sorted(tokenizer.backend.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode("utf-8")).hexdigest()


def is_shard_folder(path: str) -> bool:
    """Return whether ``path`` is a folder written by ``prepare_shards``."""
    return os.path.isfile(os.path.join(path, INDEX_FILE))


class TokenShards:
    """One split as a read-only token stream over memory-mapped shard files.

    Supports ``len()`` and slicing with step 1; a slice is a numpy view of one file, or a copy
    when it spans two files.
    """

    def __init__(self, files: Sequence[str], counts: Sequence[int], dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.arrays: list[np.memmap] = []
        self.starts: list[int] = []
        total = 0
        for file, count in zip(files, counts):
            if count == 0:
                continue  # numpy cannot map an empty file
            self.arrays.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(count,)))
            self.starts.append(total)
            total += count
        self.length = total

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"TokenShards takes slices with step 1, got {key!r}")
        start, stop, _ = key.indices(self.length)
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)

        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        position = start
        shard = first
        while position < stop:
            offset = position - self.starts[shard]
            take = min(stop - position, len(self.arrays[shard]) - offset)
            pieces.append(self.arrays[shard][offset:offset + take])
            position += take
            shard += 1
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


@dataclass
class ShardSet:
    """An opened shard folder: its index, both splits and the folder of its tokenizer."""

    folder: str
    index: dict
    train: TokenShards
    validation: TokenShards

    @property
    def tokenizer_dir(self) -> str:
        return os.path.join(self.folder, TOKENIZER_FOLDER)


def open_shards(folder: str) -> ShardSet:
    """Open a shard folder; raise ValueError when the index or a file does not match the format."""
    index_path = os.path.join(folder, INDEX_FILE)
    try:
        with open(index_path, encoding="utf-8") as handle:
            index = json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{index_path} is not valid JSON ({error}); rerun mambakit data prepare") from error
    if index.get("format") != SHARD_FORMAT or index.get("version") != SHARD_FORMAT_VERSION:
        raise ValueError(
            f"{index_path} is not a {SHARD_FORMAT} index of version {SHARD_FORMAT_VERSION} "
            f"(format {index.get('format')!r}, version {index.get('version')!r}); rerun mambakit data prepare"
        )

    dtype = np.dtype(index["dtype"])
    splits = {}
    for split in ("train", "validation"):
        files, counts = [], []
        for entry in index["splits"][split]["files"]:
            path = os.path.join(folder, entry["name"])
            expected = entry["tokens"] * dtype.itemsize
            if not os.path.isfile(path):
                raise FileNotFoundError(f"shard {path} listed in {index_path} is missing; rerun mambakit data prepare")
            if os.path.getsize(path) != expected:
                raise ValueError(
                    f"shard {path} has {os.path.getsize(path)} bytes, but {index_path} lists {expected}; "
                    "the folder is incomplete or was changed, so rerun mambakit data prepare"
                )
            files.append(path)
            counts.append(entry["tokens"])
        splits[split] = TokenShards(files, counts, dtype)
    return ShardSet(folder, index, splits["train"], splits["validation"])


def check_tokenizer_matches(shards: ShardSet, tokenizer, tokenizer_source: str) -> None:
    """Raise ValueError when ``tokenizer`` is not the one the shards were prepared with."""
    index = shards.index
    if tokenizer.vocab_size != index["vocab_size"] or tokenizer_fingerprint(tokenizer) != index["tokenizer_sha256"]:
        raise ValueError(
            f"tokenizer {tokenizer_source} (vocabulary {tokenizer.vocab_size}) is not the tokenizer the shards in "
            f"{shards.folder} were prepared with (vocabulary {index['vocab_size']}); drop --tokenizer to use "
            f"{shards.tokenizer_dir}, or rerun mambakit data prepare with --tokenizer {tokenizer_source}"
        )


class _ShardWriter:
    """Appends tokens to ``{split}_{n:05d}.bin`` files of at most ``shard_tokens`` tokens each."""

    def __init__(self, folder: str, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.files: list[dict] = []
        self.handle = None
        self.room = 0
        self._next_file()  # an empty split still gets one, empty, file

    def _next_file(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.files):05d}.bin"
        self.handle = open(os.path.join(self.folder, name), "wb")
        self.files.append({"name": name, "tokens": 0})
        self.room = self.shard_tokens

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self.room == 0:
                self._next_file()
            take = min(self.room, len(tokens))
            self.handle.write(tokens[:take].tobytes())
            self.files[-1]["tokens"] += take
            self.room -= take
            tokens = tokens[take:]

    def close(self) -> list[dict]:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        return self.files


def _tokenize_to_file(paths, tokenizer, path: str, dtype: np.dtype, progress: bool) -> np.ndarray:
    """Write the tokens of all documents, EOS after each, to ``path``; return the document lengths."""
    eos = tokenizer.eos_token_id
    lengths = array.array("q")
    batch: list[str] = []
    bar = tqdm(disable=not progress, desc="tokenize", unit="doc")

    def flush(handle) -> None:
        for ids in tokenizer.encode_batch(batch):
            handle.write(np.asarray(ids + [eos], dtype=dtype).tobytes())
            lengths.append(len(ids) + 1)
        bar.update(len(batch))
        batch.clear()

    with open(path, "wb") as handle:
        for document in iter_documents(paths):
            batch.append(document)
            if len(batch) == ENCODE_BATCH_DOCUMENTS:
                flush(handle)
        flush(handle)
    bar.close()
    return np.frombuffer(lengths, dtype=np.int64) if len(lengths) else np.zeros(0, dtype=np.int64)


def prepare_shards(
    paths: list[str],
    tokenizer,
    out_dir: str,
    validation_fraction: float = 0.02,
    seed: int = 0,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    progress: bool = False,
) -> dict:
    """Tokenise text, folder and JSONL inputs into token shards in ``out_dir``; return the index.

    Args:
        paths: files and folders, read as ``documents.iter_documents`` describes.
        tokenizer: a ``mambakit.tokenizer.Tokenizer`` with an EOS token.
        out_dir: output folder; an earlier preparation there is replaced.
        validation_fraction: share of documents held out, in [0, 1).
        seed: seed of the document shuffle, as in ``data.build_splits``.
        shard_tokens: maximum tokens per shard file.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {validation_fraction}")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; train one with an '<|endoftext|>' special token")
    os.makedirs(out_dir, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)

    # Remove the old index before any shard is overwritten, so an interrupted run leaves no index
    # that lists half-written files.
    previous = _listed_files(out_dir)
    if is_shard_folder(out_dir):
        os.remove(os.path.join(out_dir, INDEX_FILE))

    unshuffled = os.path.join(out_dir, ".tokens-in-input-order.tmp")
    try:
        lengths = _tokenize_to_file(paths, tokenizer, unshuffled, dtype, progress)
        if len(lengths) == 0:
            raise ValueError(f"the input contains no text: {', '.join(paths)}; pass non-empty text or JSONL files")
        ends = np.cumsum(lengths)
        tokens = np.memmap(unshuffled, dtype=dtype, mode="r", shape=(int(ends[-1]),))

        validation_order, train_order = split_document_order(len(lengths), validation_fraction, seed)
        splits = {}
        for split, order in (("train", train_order), ("validation", validation_order)):
            writer = _ShardWriter(out_dir, split, dtype, shard_tokens)
            for document in tqdm(order, disable=not progress, desc=f"write {split}", unit="doc"):
                writer.write(tokens[ends[document] - lengths[document]:ends[document]])
            files = writer.close()
            splits[split] = {
                "documents": len(order),
                "tokens": sum(entry["tokens"] for entry in files),
                "files": files,
            }
        del tokens
    finally:
        if os.path.exists(unshuffled):
            os.remove(unshuffled)

    tokenizer.save(os.path.join(out_dir, TOKENIZER_FOLDER))
    index = {
        "format": SHARD_FORMAT,
        "version": SHARD_FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "eos_token_id": tokenizer.eos_token_id,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "validation_fraction": validation_fraction,
        "seed": seed,
        "sources": [os.path.abspath(path) for path in paths],
        "splits": splits,
    }
    _write_index(out_dir, index)

    # Shards of an earlier, larger preparation that the new index no longer lists.
    current = {entry["name"] for split in splits.values() for entry in split["files"]}
    for name in previous - current:
        os.remove(os.path.join(out_dir, name))
    logger.info(
        "prepared %d train and %d validation tokens (%s) in %s",
        splits["train"]["tokens"], splits["validation"]["tokens"], dtype.name, out_dir,
    )
    return index


def _listed_files(folder: str) -> set[str]:
    if not is_shard_folder(folder):
        return set()
    with open(os.path.join(folder, INDEX_FILE), encoding="utf-8") as handle:
        try:
            index = json.load(handle)
        except json.JSONDecodeError:
            return set()
    return {entry["name"] for split in index.get("splits", {}).values() for entry in split.get("files", [])}


def _write_index(folder: str, index: dict) -> None:
    """Write index.json last and atomically, so a folder with an index always has complete shards."""
    path = os.path.join(folder, INDEX_FILE)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(index, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(temporary, path)
