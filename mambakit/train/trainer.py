"""Language-model training loop: AdamW, warmup + cosine schedule, validation, resumable checkpoints.

Output folder layout::

    OUT/train_config.json     the settings of the run (checked on --resume)
    OUT/checkpoints/step_*.pt  resumable states, newest K kept
    OUT/metrics.jsonl          one JSON object per logged step and per evaluation
    OUT/model/                 final weights (safetensors, transformers layout) and tokenizer
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mambakit.config import MambaConfig
from mambakit.models.mamba_lm import Mamba, parameter_groups
from mambakit.train.checkpointing import load_latest_checkpoint, save_checkpoint
from mambakit.train.data import build_splits, sample_batch, validation_batches

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one training run; the defaults suit a few-million-parameter model on a CPU."""

    data: list[str] = field(default_factory=list)
    out: str = "runs/mamba"
    tokenizer: str | None = None
    vocab_size: int = 8192
    # Model shape (ignored by --resume, which reads the saved run)
    d_model: int = 256
    n_layer: int = 4
    d_state: int = 16
    expand: int = 2
    # Optimisation
    steps: int = 2000
    batch_size: int = 16
    seq_len: int = 256
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # Bookkeeping
    validation_fraction: float = 0.02
    eval_every: int = 200
    eval_batches: int = 8
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    seed: int = 0
    backend: str = "auto"

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_every", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _load_or_train_tokenizer(config: TrainConfig):
    from mambakit.tokenizer import load_tokenizer, train_tokenizer
    from mambakit.train.data import expand_paths

    if config.tokenizer:
        return load_tokenizer(config.tokenizer)
    tokenizer_dir = os.path.join(config.out, "tokenizer")
    if os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        return load_tokenizer(tokenizer_dir)
    logger.info("training a byte-level BPE tokenizer with %d entries", config.vocab_size)
    return train_tokenizer(expand_paths(config.data), config.vocab_size, out_dir=tokenizer_dir)


def _model_config(config: TrainConfig, tokenizer) -> MambaConfig:
    return MambaConfig(
        d_model=config.d_model,
        n_layer=config.n_layer,
        d_state=config.d_state,
        expand=config.expand,
        vocab_size=8 * math.ceil(tokenizer.vocab_size / 8),
        unpadded_vocab_size=tokenizer.vocab_size,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@torch.no_grad()
def evaluate(model: Mamba, tokens, config: TrainConfig) -> float | None:
    """Return the mean validation loss over the fixed validation windows, or None without data."""
    if len(tokens) < config.seq_len + 1:
        return None
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in validation_batches(tokens, config.batch_size, config.seq_len, config.eval_batches):
        logits = model(inputs, backend=config.backend)
        total += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train()
    return total / count


def _write_metrics(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def _training_state(model, optimizer, step, generator, config) -> dict:
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "data_generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "model_config": dataclasses.asdict(model.config),
        "train_config": json.dumps(dataclasses.asdict(config)),
    }


def _check_resume_config(saved: TrainConfig, config: TrainConfig) -> None:
    """Only schedule length, logging and checkpoint settings may change on resume."""
    changeable = {"steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "backend", "data"}
    differing = [
        f"{f.name} ({getattr(saved, f.name)!r} -> {getattr(config, f.name)!r})"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in changeable and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if differing:
        raise ValueError(
            "--resume with settings that differ from the saved run: " + ", ".join(differing)
            + "; rerun with the original settings or choose a new --out folder"
        )


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train a model as ``config`` says and return a summary (losses, tokens/s, paths)."""
    config.validate()
    os.makedirs(config.out, exist_ok=True)
    checkpoint_dir = os.path.join(config.out, "checkpoints")
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    config_path = os.path.join(config.out, "train_config.json")

    state = load_latest_checkpoint(checkpoint_dir) if resume else None
    if resume and state is None:
        logger.warning("--resume: no checkpoint in %s, starting from step 0", checkpoint_dir)
    if state is not None:
        saved = TrainConfig(**json.loads(state["train_config"]))
        saved.betas = tuple(saved.betas)
        config.betas = tuple(config.betas)
        _check_resume_config(saved, config)
    elif os.path.exists(metrics_path):
        os.remove(metrics_path)  # a fresh run in a reused folder starts a fresh log

    tokenizer = _load_or_train_tokenizer(config)
    splits = build_splits(tokenizer, config.data, config.seq_len, config.validation_fraction, config.seed)

    torch.manual_seed(config.seed)
    if state is not None:
        model = Mamba(MambaConfig(**{k: v for k, v in state["model_config"].items() if k != "layout"}))
        model.load_state_dict(state["model"])
    else:
        model = Mamba(_model_config(config, tokenizer))
    model.scan_backend = config.backend
    model.train()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, betas=tuple(config.betas), fused=False
    )
    generator = torch.Generator().manual_seed(config.seed)
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["data_generator"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    with open(config_path, "w", encoding="utf-8") as handle:
        json.dump(dataclasses.asdict(config), handle, indent=2)

    logger.info(
        "training %d parameters for %d steps of %d x %d tokens",
        model.num_parameters(), config.steps, config.batch_size * config.grad_accum, config.seq_len,
    )
    tokens_per_step = config.batch_size * config.grad_accum * config.seq_len
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="train", unit="step")
    last_validation = None
    losses = []
    window_start = time.perf_counter()
    window_steps = 0
    for step in range(start, config.steps):
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr

        step_loss = 0.0
        for _ in range(config.grad_accum):
            inputs, targets = sample_batch(splits.train, config.batch_size, config.seq_len, generator)
            logits = model(inputs)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()) / config.grad_accum
            loss.backward()
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            raise FloatingPointError(
                f"loss became {step_loss} at step {step}; lower --lr or check the data, then resume "
                "from the last checkpoint"
            )
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        window_steps += 1
        done = step + 1

        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_second = window_steps * tokens_per_step / max(elapsed, 1e-9)
            _write_metrics(metrics_path, {"step": done, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                                          "tokens_per_second": tokens_per_second})
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_second:.0f}")
            window_start, window_steps = time.perf_counter(), 0
        if done % config.eval_every == 0 or done == config.steps:
            last_validation = evaluate(model, splits.validation, config)
            if last_validation is not None:
                _write_metrics(metrics_path, {"step": done, "validation_loss": last_validation,
                                              "validation_perplexity": math.exp(min(last_validation, 50))})
                logger.info("step %d: validation loss %.4f", done, last_validation)
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(_training_state(model, optimizer, done, generator, config), checkpoint_dir,
                            done, config.keep_checkpoints)
        bar.update(1)
    bar.close()

    model_dir = os.path.join(config.out, "model")
    model.eval()
    model.save_pretrained(model_dir, layout="hf")
    tokenizer.save(model_dir)
    _plot_losses(metrics_path, os.path.join(config.out, "loss.png"))
    return {
        "train_losses": losses,
        "final_train_loss": losses[-1] if losses else None,
        "validation_loss": last_validation,
        "parameters": model.num_parameters(),
        "model_dir": model_dir,
    }


def _plot_losses(metrics_path: str, image_path: str) -> None:
    """Draw the loss curve when matplotlib is installed; training never depends on it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; skipping %s", image_path)
        return
    if not os.path.exists(metrics_path):
        return
    records = [json.loads(line) for line in open(metrics_path, encoding="utf-8")]
    train_points = [(r["step"], r["loss"]) for r in records if "loss" in r]
    validation_points = [(r["step"], r["validation_loss"]) for r in records if "validation_loss" in r]
    figure, axes = plt.subplots(figsize=(6, 4))
    if train_points:
        axes.plot(*zip(*train_points), label="train")
    if validation_points:
        axes.plot(*zip(*validation_points), marker="o", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=80)
    plt.close(figure)
