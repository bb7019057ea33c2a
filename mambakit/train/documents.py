"""Training documents from text files, folders and JSONL files, read as a stream.

Accepted inputs:

* ``.txt``, ``.md`` or any other file: UTF-8 text. Documents are separated by blank lines
  (exactly ``\\n\\n``, after ``\\r\\n`` becomes ``\\n``). Each is stripped, and empty ones are dropped.
* ``.jsonl``: one JSON object per line, with the document in its ``text`` field. Blank lines are
  skipped, and so are objects whose text is empty or only whitespace.
* a folder: its ``.txt``, ``.md`` and ``.jsonl`` files, recursively, in sorted path order.

Files are decoded in chunks, so reading never needs a whole file in memory. Bad input raises
``ValueError`` naming the file and the byte offset or line.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"
READ_CHUNK_BYTES = 1 << 20


def expand_paths(paths: list[str]) -> list[str]:
    """Return the files named by ``paths``, with folders expanded to their .txt, .md and .jsonl files, sorted."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if name.endswith(TEXT_SUFFIXES + (JSONL_SUFFIX,))
            )
            if not found:
                raise FileNotFoundError(f"folder {path} contains no .txt, .md or .jsonl files")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"training data not found: {path}")
    if not files:
        raise ValueError("no training data given; pass text files, JSONL files or folders with --data")
    return files


def is_jsonl(path: str) -> bool:
    return path.endswith(JSONL_SUFFIX)


def iter_text_chunks(path: str) -> Iterator[str]:
    """Yield the decoded text of a UTF-8 file in chunks.

    Raises:
        ValueError: naming the file and the byte offset of a NUL byte (a binary file) or of the
            first invalid UTF-8 sequence.
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
                    f"{path} looks like a binary file (NUL byte at byte offset {offset + nul_index}); "
                    "pass UTF-8 text or JSONL files"
                )

            # Bytes of a character cut by the chunk boundary wait in the decoder and come back in
            # front of the next chunk, so the error offset subtracts them.
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk, final=final)
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path} is not valid UTF-8 (invalid byte at offset {offset - pending + error.start}); "
                    "convert it, for example with iconv -f GB18030 -t UTF-8"
                ) from error
            if text:
                yield text
            if final:
                return
            offset += len(chunk)


def read_text_file(path: str) -> str:
    """Read a whole UTF-8 text file; raise ValueError naming the file and offset of invalid bytes."""
    return "".join(iter_text_chunks(path))


def split_documents(text: str) -> list[str]:
    """Split text into documents at blank lines, dropping empty ones."""
    documents = [block.strip() for block in text.replace("\r\n", "\n").split("\n\n")]
    return [doc for doc in documents if doc]


def iter_text_documents(path: str) -> Iterator[str]:
    """Yield the documents of a text file; the same list as ``split_documents(read_text_file(path))``."""
    buffer = ""
    carry = ""
    for text in iter_text_chunks(path):
        # Hold back a final "\r" in case its "\n" starts the next chunk.
        text = carry + text
        carry = "\r" if text.endswith("\r") else ""
        buffer += text[: len(text) - len(carry)].replace("\r\n", "\n")

        # Everything before the last separator is complete. Splitting the rest again later finds
        # the same separators that splitting the whole text at once would.
        blocks = buffer.split("\n\n")
        buffer = blocks.pop()
        for block in blocks:
            block = block.strip()
            if block:
                yield block
    block = (buffer + carry).strip()
    if block:
        yield block


def iter_jsonl_documents(path: str, field: str = "text") -> Iterator[str]:
    """Yield the ``field`` string of each JSON object line of a JSONL file."""
    for line_number, record in iter_jsonl_records(path):
        if field not in record:
            raise ValueError(
                f"{path} line {line_number} has no {field!r} field (keys: {', '.join(sorted(record)) or 'none'}); "
                f"put each document's text in {field!r}"
            )
        text = record[field]
        if not isinstance(text, str):
            raise ValueError(
                f"{path} line {line_number}: {field!r} must be a string, got {type(text).__name__}"
            )
        if text.strip():
            yield text


def iter_jsonl_records(path: str) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (lines count from 1)."""
    line_number = 0
    pending = ""
    for chunk in iter_text_chunks(path):
        pending += chunk
        lines = pending.split("\n")
        pending = lines.pop()
        for line in lines:
            line_number += 1
            record = _parse_jsonl_line(path, line_number, line)
            if record is not None:
                yield line_number, record
    if pending:
        record = _parse_jsonl_line(path, line_number + 1, pending)
        if record is not None:
            yield line_number + 1, record


def _parse_jsonl_line(path: str, line_number: int, line: str) -> dict | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} line {line_number} is not valid JSON ({error.msg}); write one object per line"
        ) from error
    if not isinstance(record, dict):
        raise ValueError(
            f"{path} line {line_number} is a JSON {type(record).__name__}, not an object; "
            'write one object such as {"text": "..."} per line'
        )
    return record


def iter_documents(paths: list[str]) -> Iterator[str]:
    """Yield the documents of every file named by ``paths`` (files and folders), in order."""
    for file in expand_paths(paths):
        if is_jsonl(file):
            yield from iter_jsonl_documents(file)
        else:
            yield from iter_text_documents(file)


def plain_text_files(paths: list[str], scratch_dir: str) -> list[str]:
    """Return text files with the documents of ``paths``, for tools that read plain text only.

    Text files are returned as they are. The documents of each JSONL file are written to a file in
    ``scratch_dir``, separated by blank lines, so a tokenizer trains on the text and not on the
    JSON syntax around it.
    """
    files = []
    for index, file in enumerate(expand_paths(paths)):
        if not is_jsonl(file):
            files.append(file)
            continue
        os.makedirs(scratch_dir, exist_ok=True)
        converted = os.path.join(scratch_dir, f"{index:05d}-{os.path.basename(file)}.txt")
        with open(converted, "w", encoding="utf-8") as handle:
            for document in iter_jsonl_documents(file):
                handle.write(document.replace("\r\n", "\n").strip() + "\n\n")
        files.append(converted)
    return files
