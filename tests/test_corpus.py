"""Tests for mambakit.data.corpus: fortune parsing, the classical filter and the corpus builder."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from mambakit.data.corpus import (
    FORTUNES_DIR,
    build_default_corpus,
    chinese_classical_entries,
    english_kjv_text,
    fortune_file,
    is_classical_entry,
    kjv_chapters,
    normalize_entry,
    read_documents,
    read_fortunes,
)

GREEN = "\x1b[32m"
YELLOW = "\x1b[33m"
RESET = "\x1b[m"
BOLD_RESET = "\x1b[;m"

TANG_ENTRY = f"{GREEN}《静夜思》{RESET}\n{YELLOW}作者：李白{RESET}\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n"
SONG_ENTRY = f"{GREEN}《如梦令》{RESET}\n{YELLOW}作者：李清照{RESET}\n常记溪亭日暮，沉醉不知归路。\n"

CLASSICAL_POEM = "故人西辞黄鹤楼，烟花三月下扬州。\n-- 李白《黄鹤楼送孟浩然之广陵》"
ANALECTS = "学而时习之，不亦说乎？\n--《论语》"
CAIGENTAN_WITH_DE = "欲做精金美玉的人品，定从烈火中煅来。\n--《菜根谭》"
PROVERB_CLASSICAL = "路遥知马力，日久见人心。\n--《谚语》"
PROVERB_VERNACULAR = "狗咬穿烂的，人舔穿好的。\n--《谚语》"
UNATTRIBUTED_SAYING = "不入虎穴，焉得虎子?"
UNATTRIBUTED_STORY = "郑人买履\n[先秦] 韩非\n郑人有欲买履者，先自度其足，而置之其坐。"
DEBIAN_MANUAL = "5.9.1. 找出最佳 MTU\n最大传输单元 Maximum Transmission Unit (MTU) 的值"
MODERN_AUTHOR = "横眉冷对千夫指，俯首甘为孺子牛。\n-- 鲁迅《自题小像》"
DATED_MODERN_POEM = "七律《长征》\n毛泽东 一九三五年十月\n红军不怕远征难，万水千山只等闲。"
MODERN_PROSE = "其实地上本没有路，走的人多了，也便成了路。"
EMOTICON = "(╯‵□′)╯︵┻━┻"
FULL_WIDTH_DIGITS = "作者：柳开（９４６－９９９）\n鸣骹直上一千尺。"
INTERNET_QUOTE = "「我想成为正义的伙伴。」\n-- 卫宫切嗣《Fate》"

CLASSIFIER_CASES = [
    ("classical poem", CLASSICAL_POEM, True),
    ("analects", ANALECTS, True),
    ("caigentan with 的", CAIGENTAN_WITH_DE, True),
    ("classical proverb", PROVERB_CLASSICAL, True),
    ("vernacular proverb", PROVERB_VERNACULAR, False),
    ("unattributed saying", UNATTRIBUTED_SAYING, True),
    ("unattributed story", UNATTRIBUTED_STORY, True),
    ("debian manual", DEBIAN_MANUAL, False),
    ("modern author", MODERN_AUTHOR, False),
    ("dated modern poem", DATED_MODERN_POEM, False),
    ("modern prose", MODERN_PROSE, False),
    ("emoticon", EMOTICON, False),
    ("full-width digits", FULL_WIDTH_DIGITS, False),
    ("latin attribution", INTERNET_QUOTE, False),
    ("empty", "", False),
]

FAKE_BIBLE_OUTPUT = """\
Ge1:1 In the beginning God created the heaven and the earth.
Ge1:2 And the earth was without form, and void.
Ge2:1 Thus the heavens and the earth were finished.
1Cor13:4 Charity suffereth long, and is kind.  Charity envieth not.
Rev22:21 The grace of our Lord Jesus Christ be with you all. Amen.
"""


def write_fortune_file(path: Path, entries: list[str]) -> Path:
    path.write_text("%\n".join(entry if entry.endswith("\n") else entry + "\n" for entry in entries), encoding="utf-8")
    return path


def write_fake_bible(directory: Path, output: str = FAKE_BIBLE_OUTPUT, exit_status: int = 0) -> Path:
    """Write an executable that prints like `bible -f`, for tests without bible-kjv."""
    script = directory / "fake-bible"
    script.write_text(f"#!/bin/sh\ncat <<'END_OF_TEXT'\n{output}END_OF_TEXT\nexit {exit_status}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.fixture
def fortunes_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "fortunes"
    directory.mkdir()
    write_fortune_file(directory / "tang300", [TANG_ENTRY])
    write_fortune_file(directory / "song100", [SONG_ENTRY])
    chinese = [CLASSICAL_POEM, DEBIAN_MANUAL, ANALECTS, MODERN_AUTHOR, PROVERB_VERNACULAR, CLASSICAL_POEM]
    write_fortune_file(directory / "chinese", chinese)
    return directory


# ---------------------------------------------------------------------- parsing


def test_read_fortunes_splits_and_strips_ansi(tmp_path: Path) -> None:
    path = write_fortune_file(tmp_path / "poems", [TANG_ENTRY, SONG_ENTRY])
    entries = read_fortunes(path)
    assert entries == [
        "《静夜思》\n作者：李白\n床前明月光，疑是地上霜。\n举头望明月，低头思故乡。",
        "《如梦令》\n作者：李清照\n常记溪亭日暮，沉醉不知归路。",
    ]
    assert all("\x1b" not in entry for entry in entries)


def test_read_fortunes_normalises_whitespace(tmp_path: Path) -> None:
    raw = (
        "%\n"
        "   青玉案·元夕\n"
        "  [宋]\u3000辛弃疾\n"
        " \n"
        "\xa0\xa0\xa0东风夜放花千树。\t\n"
        "\n"
        f"{YELLOW}    -- {GREEN}《谚语》{RESET}{BOLD_RESET}\n"
        "%\n"
        "\n"
        "%\n"
        "last entry without a closing percent line"
    )
    path = tmp_path / "spaces"
    path.write_text(raw, encoding="utf-8")
    entries = read_fortunes(path)
    assert entries == ["青玉案·元夕\n[宋] 辛弃疾\n东风夜放花千树。\n-- 《谚语》", "last entry without a closing percent line"]


def test_read_fortunes_windows_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "crlf"
    path.write_bytes("第一条\r\n%\r\n第二条\r\n".encode("utf-8"))
    assert read_fortunes(path) == ["第一条", "第二条"]


def test_read_fortunes_percent_inside_line_is_text(tmp_path: Path) -> None:
    path = tmp_path / "percent"
    path.write_text("百分之百 100% 正确\n%\n下一条\n", encoding="utf-8")
    assert read_fortunes(path) == ["百分之百 100% 正确", "下一条"]


def test_read_fortunes_gb2312_file(tmp_path: Path) -> None:
    path = tmp_path / "legacy"
    path.write_bytes("床前明月光\n%\n疑是地上霜\n".encode("gb2312"))
    assert read_fortunes(path) == ["床前明月光", "疑是地上霜"]


def test_read_fortunes_undecodable_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "garbage"
    path.write_bytes(b"\xff\xfe\xff\xfe")
    with pytest.raises(ValueError, match="neither UTF-8"):
        read_fortunes(path)


def test_read_fortunes_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes-zh"):
        read_fortunes(tmp_path / "tang300")


def test_normalize_entry_empty_after_escapes() -> None:
    assert normalize_entry(f"{GREEN}{RESET}\n \n\u3000") == ""


def test_fortune_file_prefers_u8(tmp_path: Path) -> None:
    (tmp_path / "tang300").write_text("x", encoding="utf-8")
    assert fortune_file("tang300", tmp_path) == tmp_path / "tang300"
    (tmp_path / "tang300.u8").write_text("x", encoding="utf-8")
    assert fortune_file("tang300", tmp_path) == tmp_path / "tang300.u8"
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes-zh"):
        fortune_file("song100", tmp_path)


# ---------------------------------------------------------------------- classical filter


@pytest.mark.parametrize("label, entry, expected", CLASSIFIER_CASES, ids=[case[0] for case in CLASSIFIER_CASES])
def test_is_classical_entry(label: str, entry: str, expected: bool) -> None:
    assert is_classical_entry(normalize_entry(entry)) is expected


def test_chinese_classical_entries_synthetic(fortunes_dir: Path) -> None:
    entries = chinese_classical_entries(fortunes_dir)
    assert entries == [
        normalize_entry(TANG_ENTRY),
        normalize_entry(SONG_ENTRY),
        normalize_entry(CLASSICAL_POEM),
        normalize_entry(ANALECTS),
    ]


# ---------------------------------------------------------------------- King James Bible


def test_kjv_chapters_from_fake_command(tmp_path: Path) -> None:
    chapters = kjv_chapters(str(write_fake_bible(tmp_path)))
    assert chapters == [
        "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void.",
        "Thus the heavens and the earth were finished.",
        "Charity suffereth long, and is kind. Charity envieth not.",
        "The grace of our Lord Jesus Christ be with you all. Amen.",
    ]


def test_english_kjv_text_separates_chapters(tmp_path: Path) -> None:
    text = english_kjv_text(str(write_fake_bible(tmp_path)))
    assert text.count("\n\n") == 3
    assert not re.search(r"^\w+\d+:\d+ ", text, flags=re.MULTILINE)


def test_kjv_missing_command_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install bible-kjv"):
        kjv_chapters(str(tmp_path / "no-such-bible"))


def test_kjv_failing_command_raises(tmp_path: Path) -> None:
    script = write_fake_bible(tmp_path, output="", exit_status=3)
    with pytest.raises(RuntimeError, match="exit status 3"):
        kjv_chapters(str(script))


def test_kjv_unexpected_format_raises(tmp_path: Path) -> None:
    script = write_fake_bible(tmp_path, output="Genesis 1\n\n  1 In the beginning\n")
    with pytest.raises(RuntimeError, match="unexpected line 1"):
        kjv_chapters(str(script))


# ---------------------------------------------------------------------- corpus builder


def test_build_corpus_synthetic(fortunes_dir: Path, tmp_path: Path) -> None:
    bible = str(write_fake_bible(tmp_path))
    stats = build_default_corpus(tmp_path / "out", fortunes_dir=fortunes_dir, bible_command=bible, en_to_zh_ratio=None)

    zh_documents = read_documents(stats.zh_path)
    en_documents = read_documents(stats.en_path)
    assert sorted(zh_documents) == sorted(chinese_classical_entries(fortunes_dir))
    assert sorted(en_documents) == sorted(kjv_chapters(bible))
    assert stats.zh_documents == len(zh_documents) == stats.zh_unique_documents == 4
    assert stats.en_documents == len(en_documents) == stats.en_documents_available == 4
    assert stats.zh_chars == sum(len(document) for document in zh_documents)
    assert stats.en_chars == stats.en_chars_available == sum(len(document) for document in en_documents)
    assert stats.zh_path.read_text(encoding="utf-8").endswith("\n")


def test_build_corpus_english_cap(fortunes_dir: Path, tmp_path: Path) -> None:
    bible = str(write_fake_bible(tmp_path))
    by_ratio = build_default_corpus(tmp_path / "ratio", fortunes_dir=fortunes_dir, bible_command=bible, en_to_zh_ratio=1.0)
    assert by_ratio.en_chars <= by_ratio.zh_chars
    assert by_ratio.en_documents < by_ratio.en_documents_available

    absolute = build_default_corpus(tmp_path / "abs", fortunes_dir=fortunes_dir, bible_command=bible, en_max_chars=60)
    assert absolute.en_chars <= 60

    nothing = build_default_corpus(tmp_path / "none", fortunes_dir=fortunes_dir, bible_command=bible, en_max_chars=0)
    assert nothing.en_documents == 0
    assert read_documents(nothing.en_path) == []


def test_build_corpus_zh_repeat(fortunes_dir: Path, tmp_path: Path) -> None:
    bible = str(write_fake_bible(tmp_path))
    stats = build_default_corpus(tmp_path / "out", fortunes_dir=fortunes_dir, bible_command=bible, zh_repeat=3)
    documents = read_documents(stats.zh_path)
    assert len(documents) == 3 * stats.zh_unique_documents
    assert sorted(documents) == sorted(chinese_classical_entries(fortunes_dir) * 3)


def test_build_corpus_seed_is_deterministic(fortunes_dir: Path, tmp_path: Path) -> None:
    bible = str(write_fake_bible(tmp_path))
    first = build_default_corpus(tmp_path / "a", seed=7, fortunes_dir=fortunes_dir, bible_command=bible)
    second = build_default_corpus(tmp_path / "b", seed=7, fortunes_dir=fortunes_dir, bible_command=bible)
    assert first.zh_path.read_bytes() == second.zh_path.read_bytes()
    assert first.en_path.read_bytes() == second.en_path.read_bytes()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zh_repeat": 0}, "zh_repeat"),
        ({"en_to_zh_ratio": 0.0}, "en_to_zh_ratio"),
        ({"en_max_chars": -1}, "en_max_chars"),
    ],
)
def test_build_corpus_invalid_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_default_corpus(tmp_path, **kwargs)


# ---------------------------------------------------------------------- real Debian data


def require_fortunes_zh() -> None:
    if not (FORTUNES_DIR / "chinese").is_file():
        pytest.skip("fortunes-zh is not installed; install it with apt-get install fortunes-zh")


def require_bible_kjv() -> None:
    if shutil.which("bible") is None:
        pytest.skip("bible-kjv is not installed; install it with apt-get install bible-kjv")


def test_real_tang300_and_song100() -> None:
    require_fortunes_zh()
    tang = read_fortunes(fortune_file("tang300"))
    song = read_fortunes(fortune_file("song100"))
    assert len(tang) >= 300
    assert len(song) >= 90
    assert tang[0].startswith("《")
    assert all("\x1b" not in entry for entry in tang + song)


def test_real_chinese_classical_filter() -> None:
    require_fortunes_zh()
    all_entries = read_fortunes(fortune_file("chinese"))
    classical = [entry for entry in all_entries if is_classical_entry(entry)]
    # fortunes-zh 2.98 gives 4231 of 5263; other releases differ a little.
    assert 0.6 * len(all_entries) < len(classical) < 0.95 * len(all_entries)
    joined = "\n".join(classical)
    assert "论语" in joined
    assert "鲁迅" not in joined
    assert "Debian" not in joined
    assert not re.search(r"[A-Za-z0-9]", joined)


def test_real_kjv_chapters() -> None:
    require_bible_kjv()
    chapters = kjv_chapters()
    assert len(chapters) == 1189
    assert chapters[0].startswith("In the beginning God created the heaven and the earth.")
    assert chapters[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")


def test_real_default_corpus(tmp_path: Path) -> None:
    require_fortunes_zh()
    require_bible_kjv()
    stats = build_default_corpus(tmp_path)
    assert stats.zh_chars > 100_000
    assert stats.en_chars <= 3 * stats.zh_chars
    assert stats.en_chars > 2.9 * stats.zh_chars - 20_000  # whole chapters leave a small gap
    assert stats.en_chars_available > 4_000_000
    assert len(read_documents(stats.zh_path)) == stats.zh_documents
    assert os.path.getsize(stats.en_path) > 0
