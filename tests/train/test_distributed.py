"""Data-parallel training under torchrun (gloo on 127.0.0.1) matches one process and resumes across process counts."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from mambakit.train.trainer import TrainConfig, train

SETTINGS = dict(d_model=32, n_layer=2, d_state=4, steps=4, batch_size=2, seq_len=32, lr=5e-3, warmup_steps=2,
                eval_every=2, eval_batches=1, log_every=1, checkpoint_every=2, seed=3)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_arguments(settings: dict) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in settings.items()]


def torchrun_train(corpus, tokenizer, out, *extra: str) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "mambakit.cli", "train", "--data", str(corpus), "--tokenizer", str(tokenizer), "--out", str(out),
        "--no-progress", *cli_arguments(SETTINGS), *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def max_weight_difference(folder_a, folder_b) -> float:
    a = load_file(os.path.join(folder_a, "model", "model.safetensors"))
    b = load_file(os.path.join(folder_b, "model", "model.safetensors"))
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


def train_losses(folder) -> list[float]:
    with open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8") as handle:
        return [record["loss"] for record in map(json.loads, handle) if "loss" in record]


@pytest.fixture(scope="module")
def ddp_run(text_corpus, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    torchrun_train(text_corpus, tokenizer_dir, out)
    return out


def config_for(corpus, tokenizer, out, **overrides) -> TrainConfig:
    return TrainConfig(data=[str(corpus)], tokenizer=str(tokenizer), out=str(out), **{**SETTINGS, **overrides})


def test_two_processes_equal_one_with_accumulation(ddp_run, text_corpus, tokenizer_dir, tmp_path):
    single = tmp_path / "single"
    summary = train(config_for(text_corpus, tokenizer_dir, single, grad_accum=2), progress=False)

    assert max_weight_difference(ddp_run, single) < 1e-5
    ddp_losses = train_losses(ddp_run)
    assert len(ddp_losses) == SETTINGS["steps"]  # rank 0 alone writes the log
    assert ddp_losses == pytest.approx(summary["train_losses"], abs=1e-5)


def test_resume_two_processes_on_one(ddp_run, text_corpus, tokenizer_dir, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(ddp_run, resumed)
    shutil.rmtree(resumed / "model")
    os.remove(resumed / "checkpoints" / "step_00000004.pt")

    with pytest.raises(ValueError, match="on 1 process pass --grad-accum 2"):
        train(config_for(text_corpus, tokenizer_dir, resumed), resume=True, progress=False)
    train(config_for(text_corpus, tokenizer_dir, resumed, grad_accum=2), resume=True, progress=False)

    assert max_weight_difference(ddp_run, resumed) < 1e-5
    assert train_losses(resumed) == pytest.approx(train_losses(ddp_run), abs=1e-5)


def test_fsdp_matches_ddp_and_resumes_on_one(ddp_run, text_corpus, tokenizer_dir, tmp_path):
    fsdp = tmp_path / "fsdp"
    torchrun_train(text_corpus, tokenizer_dir, fsdp, "--fsdp")
    # FSDP on CPUs runs the reference scan, which rounds differently from the numba kernels.
    assert max_weight_difference(ddp_run, fsdp) < 1e-4

    resumed = tmp_path / "fsdp-resumed"
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "model")
    os.remove(resumed / "checkpoints" / "step_00000004.pt")
    train(config_for(text_corpus, tokenizer_dir, resumed, grad_accum=2, backend="reference"), resume=True,
          progress=False)
    assert max_weight_difference(fsdp, resumed) < 1e-5
