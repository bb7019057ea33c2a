"""The command line on the bundled model, and its errors."""

import json
import os
import subprocess
import sys

import pytest

from mambakit.cli import default_model_path, main


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "mambakit.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def test_bundled_model_is_shipped():
    folder = default_model_path()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert os.path.getsize(os.path.join(folder, "model.safetensors")) < 21 * 2**20


@pytest.mark.parametrize("prompt", ["床前明月光", "It is a truth universally"])
def test_generate_continues_prompt(prompt):
    result = run_cli("generate", prompt, "--max-new-tokens", "24", "--seed", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt)
    assert len(result.stdout.strip()) > len(prompt)
    assert "\ufffd" not in result.stdout


def test_generate_is_repeatable_with_seed():
    first = run_cli("generate", "白日", "--max-new-tokens", "16", "--seed", "3", "--no-stream")
    second = run_cli("generate", "白日", "--max-new-tokens", "16", "--seed", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout


def test_generate_continues_chinese_in_chinese():
    result = run_cli("generate", "床前明月光", "--max-new-tokens", "30", "--temperature", "0")
    text = result.stdout.strip()[len("床前明月光"):]
    han = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    latin = sum(ch.isascii() and ch.isalpha() for ch in text)
    assert han > latin


def test_generate_continues_english_in_english():
    result = run_cli("generate", "And God said", "--max-new-tokens", "30", "--temperature", "0")
    text = result.stdout.strip()[len("And God said"):]
    han = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    latin = sum(ch.isascii() and ch.isalpha() for ch in text)
    assert latin > han


def test_info_reports_bundled_model(capsys):
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "hf"
    assert 1_000_000 < report["parameters"] < 6_000_000
    assert report["tokenizer"] is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "x", "--temperature", "-1"], "temperature"),
        (["generate", "x", "--top-p", "1.5"], "top_p"),
        (["generate", "x", "--repetition-penalty", "0"], "repetition_penalty"),
        (["generate", ""], "empty"),
        (["generate", "x", "--model", "/nonexistent/model"], "model folder not found"),
        (["info", "/nonexistent/model"], "config.json not found"),
    ],
)
def test_bad_input_gives_clear_error(args, message, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_model_without_tokenizer_names_fix(tmp_path, capsys):
    from model_factory import make_model

    make_model().save_pretrained(tmp_path)
    assert main(["generate", "x", "--model", str(tmp_path)]) == 2
    assert "--tokenizer" in capsys.readouterr().err
