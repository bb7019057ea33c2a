"""Fixtures shared by the training tests: a small bilingual corpus and a tokenizer trained on it."""

import pytest

from mambakit.tokenizer import train_tokenizer

TEXT = (
    "In the beginning God created the heaven and the earth.\n\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n\n"
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n\n"
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n\n"
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n\n"
)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT * 20, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(text_corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([str(text_corpus)], 320, out_dir=str(folder))
    return folder
