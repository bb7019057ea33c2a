"""Build the default Chinese + English training corpus from Debian packages.

Sources (installed with ``apt-get install fortunes-zh bible-kjv``):

* Chinese: the ``fortunes-zh`` data files in ``/usr/share/games/fortunes``.
  ``tang300`` (300 Tang poems) and ``song100`` (100 Song ci) are used in full.
  ``chinese`` mixes classical texts (the Analects, Dao De Jing, Caigentan,
  Zengguang Xianwen, the Book of Songs, Tang/Song poetry, proverbs) with
  modern material (the Debian reference manual, quotations of 20th-century
  writers, internet jokes). Only its classical entries are kept, by the
  rule of :func:`is_classical_entry`.
* English: the King James Bible, read through the ``bible`` command of
  ``bible-kjv``.

Licences: the ``fortunes-zh`` package is GPL-3.0-or-later (its Debian
copyright file), while the classical texts in it are centuries old and in
the public domain. The KJV text is public domain: Debian's copyright file
for bible-kjv states that its copyright has expired, although in the
United Kingdom the Crown's letters patent still cover it. The ``bible``
program itself is GPL-2.0-or-later. The corpus is built on the user's
machine at training time and never committed to this repository.

Output format: ``zh.txt`` and ``en.txt`` hold one document per paragraph
block. Documents contain no blank lines and are separated by one blank
line. A Chinese document is one fortune entry (a poem with its title and
author, a saying with its source). An English document is one Bible chapter
with one verse per line and the verse references ("Ge1:1") removed, because
they are noise for a language model.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_INSTALL_HINT = "install it with apt-get install fortunes-zh"
BIBLE_INSTALL_HINT = "install it with apt-get install bible-kjv"

# Control Sequence Introducer escapes such as "\x1b[32m" and "\x1b[;m":
# the fortune files use them to colour titles and attributions.
ANSI_ESCAPE_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Horizontal whitespace runs inside a line, the ideographic space U+3000
# and no-break space U+00A0 included, become one ASCII space.
HORIZONTAL_SPACE_RE = re.compile(r"[^\S\n]+")

# A year written with Chinese numerals ("一九六一年"). In the `chinese`
# file only modern entries carry such dates (Mao Zedong's poems, Lu Xun's essays).
CHINESE_NUMERAL_YEAR_RE = re.compile(r"[〇○零一二三四五六七八九]{4}年")

# Authors and works after 1912 (the end of the Qing dynasty) named in
# attributions of the `chinese` file of fortunes-zh 2.98. Their entries
# contain no Latin letters or digits, so rule 1 of is_classical_entry does
# not drop them.
MODERN_SOURCES = (
    "鲁迅",
    "毛泽东",
    "钱钟书",
    "老舍",
    "巴金",
    "冰心",
    "朱自清",
    "余光中",
    "陈毅",
    "胡志明",
    "吴军",
    "赫拉利",
    "李彦宏",
    "王健林",
    "显卡吧",
    "网吧",
    "钢之炼金术师",
    "自由软件",
)

# Characters that are frequent in modern written Chinese but (nearly)
# absent from classical Chinese, which uses 之/其/乎/焉 in their place.
VERNACULAR_MARKERS = frozenset("的们吗呢您她它吧")

# Proverbs are folk sayings, partly colloquial: an entry attributed only to
# 《谚语》 gets the vernacular check like an entry without attribution.
PROVERB_SOURCE = "《谚语》"

# Classical Chinese is denser than English: a translation needs roughly one
# Chinese character per three English characters (an estimate, not measured
# in this project). The default cap on English characters uses that ratio, so
# that both languages carry similar amounts of content and, because a Chinese
# character takes 3 UTF-8 bytes, similar numbers of bytes.
DEFAULT_EN_TO_ZH_RATIO = 3.0

# bible-kjv prints "<book><chapter>:<verse> <text>" per verse when
# pretty-printing is toggled off with -f. Book names may start with a digit ("1Cor").
KJV_VERSE_RE = re.compile(r"^(?P<book>[1-3]?[A-Za-z]+)(?P<chapter>\d+):(?P<verse>\d+) (?P<text>.*)$")
KJV_FULL_RANGE = "Gen1:1-Rev22:21"
KJV_VERSE_COUNT = 31102


# ---------------------------------------------------------------------- fortunes


def fortune_file(name: str, directory: str | os.PathLike[str] = FORTUNES_DIR) -> Path:
    """Return the path of a fortunes-zh data file, preferring the ``.u8`` name.

    In fortunes-zh 2.98 the plain files (``tang300``) are UTF-8 and the
    ``.u8`` names are symlinks to them. Older releases shipped GB2312 plain
    files next to UTF-8 ``.u8`` copies, so the ``.u8`` name is the one that
    is UTF-8 in both layouts.

    Raises:
        FileNotFoundError: when neither file exists.
    """
    directory = Path(directory)
    for candidate in (directory / f"{name}.u8", directory / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"fortune file {name!r} not found in {str(directory)!r}; {FORTUNES_INSTALL_HINT}")


def read_fortunes(path: str | os.PathLike[str]) -> list[str]:
    """Parse a fortune file into normalised entries.

    Entries are separated by lines that contain only ``%``. ANSI colour
    escapes are removed, runs of horizontal whitespace (U+3000 and U+00A0
    included) become one space, lines are stripped, and empty lines are
    dropped, so an entry never contains a blank line. Empty entries are skipped.

    The file is decoded as UTF-8. A file that is not valid UTF-8 is decoded
    as GB18030, a superset of the GB2312 encoding of old fortunes-zh releases.

    Args:
        path: the fortune data file (not the ``.dat`` index).

    Returns:
        list[str]: the entries, lines joined with "\\n", in file order.

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when the file is neither UTF-8 nor GB18030.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fortune file {str(path)!r} not found; {FORTUNES_INSTALL_HINT}")
    raw = path.read_bytes()
    text = _decode_fortune_bytes(raw, path)

    entries: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip() == "%":
            _append_entry(entries, current)
            current = []
        else:
            current.append(line)
    _append_entry(entries, current)
    return entries


def _decode_fortune_bytes(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        try:
            text = raw.decode("gb18030")
        except UnicodeDecodeError as gb_error:
            raise ValueError(
                f"fortune file {str(path)!r} is neither UTF-8 (invalid byte at offset {utf8_error.start}) "
                f"nor GB18030 (invalid byte at offset {gb_error.start}); convert it to UTF-8 first"
            ) from gb_error
        logger.info("%s is not UTF-8, decoded it as GB18030", path)
        return text


def _append_entry(entries: list[str], lines: list[str]) -> None:
    entry = normalize_entry("\n".join(lines))
    if entry:
        entries.append(entry)


def normalize_entry(text: str) -> str:
    """Remove ANSI escapes, collapse horizontal whitespace and drop empty lines.

    Returns:
        The normalised text, "" when nothing but whitespace and escapes remains.
    """
    text = ANSI_ESCAPE_RE.sub("", text)
    lines = []
    for line in text.splitlines():
        line = HORIZONTAL_SPACE_RE.sub(" ", line).strip()
        if line:
            lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------- classical filter


def is_classical_entry(entry: str) -> bool:
    """Decide whether a normalised entry of the ``chinese`` fortune file is classical.

    An entry is kept when all of these hold:

    1. It contains only CJK ideographs, punctuation and whitespace. Latin
       letters, digits, kana, emoticon symbols and box drawing mark the
       Debian manual, software quotations, anime lines and internet jokes.
    2. No attribution line (a line starting with ``--``) names a source in
       :data:`MODERN_SOURCES`, and no year is written in Chinese numerals.
    3. An entry without a named source (no attribution line, or only
       《谚语》) contains none of the vernacular characters in
       :data:`VERNACULAR_MARKERS`. Entries with a named classical source may
       contain them: the Ming-dynasty Caigentan uses 的, Song ci use 么.

    On fortunes-zh 2.98 this keeps 4231 of the 5263 entries.

    NOTE: two short modern jokes without attribution and without
    vernacular markers (an internet slang abbreviation and a phone-shop
    joke) still pass.

    Args:
        entry: one entry as returned by :func:`read_fortunes`.
    """
    if not entry.strip():
        return False

    for char in entry:
        if not _is_classical_char(char):
            return False

    attributions = [line[2:].strip() for line in entry.splitlines() if line.startswith("--")]
    for attribution in attributions:
        if any(source in attribution for source in MODERN_SOURCES):
            return False
    if CHINESE_NUMERAL_YEAR_RE.search(entry):
        return False

    has_named_source = any(attribution.replace(PROVERB_SOURCE, "").strip() for attribution in attributions)
    if not has_named_source and any(char in VERNACULAR_MARKERS for char in entry):
        return False
    return True


def _is_classical_char(char: str) -> bool:
    if char.isspace():
        return True
    if _is_cjk_ideograph(char):
        return True
    # Punctuation of any script: ，。《》“”…— and ASCII .,?!;:'"()[]/-
    return unicodedata.category(char).startswith("P")


def _is_cjk_ideograph(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK Unified Ideographs
        or 0x3400 <= code <= 0x4DBF  # Extension A
        or 0x20000 <= code <= 0x323AF  # Extensions B to H
        or 0xF900 <= code <= 0xFAFF  # Compatibility Ideographs
        or code == 0x3007  # 〇, the ideographic zero
    )


def chinese_classical_entries(directory: str | os.PathLike[str] = FORTUNES_DIR) -> list[str]:
    """Collect the classical Chinese entries of fortunes-zh.

    Returns ``tang300`` and ``song100`` in full, then the entries of
    ``chinese`` that pass :func:`is_classical_entry`. Exact duplicates
    (some poems are in two files) are kept once, at their first position.

    Args:
        directory: folder of the fortune data files.

    Returns:
        list[str] of normalised entries.

    Raises:
        FileNotFoundError: when a data file is missing.
    """
    entries = read_fortunes(fortune_file("tang300", directory))
    entries += read_fortunes(fortune_file("song100", directory))
    entries += [entry for entry in read_fortunes(fortune_file("chinese", directory)) if is_classical_entry(entry)]
    return _unique(entries)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------- King James Bible


def kjv_chapters(bible_command: str = "bible", timeout_s: float = 120.0) -> list[str]:
    """Read the King James Bible, one document per chapter.

    Runs ``bible -f Gen1:1-Rev22:21``, which prints one verse per line with
    its reference. The reference is removed and double spaces after
    sentences are collapsed.

    Args:
        bible_command: name or path of the ``bible`` program.
        timeout_s: time limit for the command, in seconds.

    Returns:
        list[str] of 1189 chapters in canonical order, verses joined with "\\n".

    Raises:
        FileNotFoundError: when the command is missing.
        RuntimeError: when the command fails or prints an unexpected format.
    """
    executable = shutil.which(bible_command)
    if executable is None:
        raise FileNotFoundError(f"command {bible_command!r} not found; {BIBLE_INSTALL_HINT}")

    command = [executable, "-f", KJV_FULL_RANGE]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{' '.join(command)} timed out after {timeout_s} s") from error
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", errors="replace").strip()
        raise RuntimeError(
            f"{' '.join(command)} failed with exit status {result.returncode}: {stderr or '(no output)'}; "
            f"check that the bible-kjv-text data is installed ({BIBLE_INSTALL_HINT})"
        )

    return _parse_kjv_output(result.stdout.decode("utf-8", errors="replace"), command)


def _parse_kjv_output(output: str, command: Sequence[str]) -> list[str]:
    chapters: dict[tuple[str, str], list[str]] = {}
    verse_count = 0
    for line_number, line in enumerate(output.splitlines(), start=1):
        if not line.strip():
            continue
        match = KJV_VERSE_RE.match(line)
        if match is None:
            raise RuntimeError(
                f"unexpected line {line_number} in the output of {' '.join(command)}: {line[:80]!r}; "
                f"expected '<book><chapter>:<verse> <text>' (pretty-printing off)"
            )
        verse = HORIZONTAL_SPACE_RE.sub(" ", match["text"]).strip()
        chapters.setdefault((match["book"], match["chapter"]), []).append(verse)
        verse_count += 1

    if verse_count != KJV_VERSE_COUNT:
        logger.warning("bible printed %d verses, the KJV has %d", verse_count, KJV_VERSE_COUNT)
    if not chapters:
        raise RuntimeError(f"{' '.join(command)} printed no verses; {BIBLE_INSTALL_HINT}")
    return ["\n".join(verses) for verses in chapters.values()]


def english_kjv_text(bible_command: str = "bible") -> str:
    """Return the whole King James Bible as text.

    Chapters are separated by a blank line and verses are one per line,
    without references (see :func:`kjv_chapters`).

    Raises:
        FileNotFoundError: when the ``bible`` command is missing.
        RuntimeError: when the command fails.
    """
    return "\n\n".join(kjv_chapters(bible_command))


# ---------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class CorpusStats:
    """Sizes of a corpus written by :func:`build_default_corpus`.

    Character counts cover document text only, not the blank lines between
    documents.
    """

    zh_path: Path
    en_path: Path
    zh_chars: int
    en_chars: int
    zh_documents: int
    en_documents: int
    zh_unique_documents: int
    en_chars_available: int
    en_documents_available: int


def build_default_corpus(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    zh_repeat: int = 1,
    en_to_zh_ratio: float | None = DEFAULT_EN_TO_ZH_RATIO,
    en_max_chars: int | None = None,
    fortunes_dir: str | os.PathLike[str] = FORTUNES_DIR,
    bible_command: str = "bible",
) -> CorpusStats:
    """Write the bilingual training corpus ``zh.txt`` and ``en.txt``.

    The KJV has 4.1 million characters of verse text and the classical
    Chinese entries of fortunes-zh 2.98 have 0.26 million, so English is
    capped to keep both languages in proportion (see
    :data:`DEFAULT_EN_TO_ZH_RATIO`; the default keeps about 0.78 million
    English characters, 225 of the 1189 chapters for seed 0). Whole
    chapters are drawn in a random order until the cap would be exceeded.
    Both files list their documents in a random order, so a split of the
    last documents for validation is a random sample.

    Args:
        out_dir: output folder, created when missing.
        seed: seed for the document order and the choice of chapters.
        zh_repeat: how many copies of each Chinese document to write
            (each copy in its own random order). The English cap counts the
            repeated Chinese text.
        en_to_zh_ratio: maximum English characters per Chinese character,
            or None for no ratio cap.
        en_max_chars: absolute maximum of English characters, or None. When
            both caps are set, the smaller one applies.
        fortunes_dir: folder of the fortunes-zh data files.
        bible_command: name or path of the ``bible`` program.

    Returns:
        The :class:`CorpusStats` of the written files.

    Raises:
        ValueError: invalid ``zh_repeat``, ``en_to_zh_ratio`` or ``en_max_chars``.
        FileNotFoundError: fortunes-zh or bible-kjv is not installed.
    """
    if not isinstance(zh_repeat, int) or zh_repeat < 1:
        raise ValueError(f"zh_repeat must be a positive integer, got {zh_repeat!r}")
    if en_to_zh_ratio is not None and not en_to_zh_ratio > 0:
        raise ValueError(f"en_to_zh_ratio must be positive or None, got {en_to_zh_ratio!r}")
    if en_max_chars is not None and (not isinstance(en_max_chars, int) or en_max_chars < 0):
        raise ValueError(f"en_max_chars must be a non-negative integer or None, got {en_max_chars!r}")

    rng = random.Random(seed)

    zh_unique = chinese_classical_entries(fortunes_dir)
    zh_documents: list[str] = []
    for _ in range(zh_repeat):
        copy = list(zh_unique)
        rng.shuffle(copy)
        zh_documents += copy
    zh_chars = sum(len(document) for document in zh_documents)

    chapters = kjv_chapters(bible_command)
    en_chars_available = sum(len(chapter) for chapter in chapters)
    en_cap = _english_cap(zh_chars, en_to_zh_ratio, en_max_chars)
    en_documents = _take_documents(chapters, en_cap, rng)
    en_chars = sum(len(document) for document in en_documents)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zh_path = _write_documents(out_dir / "zh.txt", zh_documents)
    en_path = _write_documents(out_dir / "en.txt", en_documents)

    stats = CorpusStats(
        zh_path=zh_path,
        en_path=en_path,
        zh_chars=zh_chars,
        en_chars=en_chars,
        zh_documents=len(zh_documents),
        en_documents=len(en_documents),
        zh_unique_documents=len(zh_unique),
        en_chars_available=en_chars_available,
        en_documents_available=len(chapters),
    )
    logger.info("wrote corpus to %s: %s", out_dir, stats)
    return stats


def _english_cap(zh_chars: int, en_to_zh_ratio: float | None, en_max_chars: int | None) -> int | None:
    caps = []
    if en_to_zh_ratio is not None:
        caps.append(int(zh_chars * en_to_zh_ratio))
    if en_max_chars is not None:
        caps.append(en_max_chars)
    return min(caps) if caps else None


def _take_documents(documents: Sequence[str], max_chars: int | None, rng: random.Random) -> list[str]:
    """Shuffle documents and keep a prefix of at most ``max_chars`` characters (all when None)."""
    order = list(documents)
    rng.shuffle(order)
    if max_chars is None:
        return order

    selected: list[str] = []
    total = 0
    for document in order:
        if total + len(document) > max_chars:
            break
        selected.append(document)
        total += len(document)
    return selected


def _write_documents(path: Path, documents: Sequence[str]) -> Path:
    for index, document in enumerate(documents):
        # A blank line inside a document would split it in two when read back.
        if "\n\n" in document or not document.strip():
            raise ValueError(f"document {index} for {path.name} is empty or contains a blank line: {document[:60]!r}")
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n\n".join(documents))
        if documents:
            handle.write("\n")
    return path


def read_documents(path: str | os.PathLike[str]) -> list[str]:
    """Read a corpus file written by :func:`build_default_corpus` back into documents.

    Returns:
        list[str]: the documents, split at blank lines.
    """
    text = Path(path).read_text(encoding="utf-8")
    return [block.strip("\n") for block in re.split(r"\n\s*\n", text) if block.strip()]
