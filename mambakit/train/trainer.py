"""Training loop: AdamW, warmup + cosine schedule, validation, resumable checkpoints.

The loop is shared by language modelling (``lm_task``) and sequence classification
(``classify_task``). It runs in one process, or in each process that ``torchrun`` starts, with
DDP or FSDP (``distributed``), bf16 autocast (``precision``), per-block activation checkpointing
and gradient accumulation.

Output folder layout::

    OUT/train_config.json     the settings of the run (checked on --resume)
    OUT/checkpoints/step_*.pt  resumable states, newest K kept
    OUT/metrics.jsonl          one JSON object per logged step and per evaluation
    OUT/model/                 final weights (safetensors, transformers layout) and tokenizer

Only rank 0 writes to OUT. Checkpoints hold full, unsharded state, so a run resumes under any
number of processes that keeps ``batch_size * grad_accum * processes``. With several machines,
OUT must be on a file system that all of them read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from mambakit.models.mamba_lm import no_weight_decay_names
from mambakit.train import distributed
from mambakit.train.checkpointing import load_latest_checkpoint, save_checkpoint
from mambakit.train.full_state import build_optimizer, full_model_state, load_optimizer_state
from mambakit.train.metrics import plot_losses, truncate_metrics, write_metrics
from mambakit.train.precision import DTYPES, autocast
from mambakit.train.resume import check_resume_config, collect_training_state, restore_streams
from mambakit.train.shards import ShardSet, is_shard_folder, open_shards
from mambakit.train.streams import DataStreams

logger = logging.getLogger(__name__)

TASKS = ("lm", "classify")


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
    # Devices and precision (changeable on --resume, except dtype)
    device: str = "cpu"
    dtype: str = "fp32"
    grad_checkpointing: bool = False
    fsdp: bool = False
    # Fine-tuning and tasks
    init_from: str | None = None
    task: str = "lm"
    validation_data: str | None = None

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
        if self.dtype not in DTYPES:
            raise ValueError(f"invalid dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if self.task not in TASKS:
            raise ValueError(f"invalid task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.validation_data and self.task != "classify":
            raise ValueError(
                "--validation-data is only for --task classify; language modelling validates on --validation-fraction "
                "of the documents"
            )


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _open_shard_data(config: TrainConfig) -> ShardSet | None:
    """Open ``--data`` as token shards when it names a folder written by ``data prepare``."""
    if not any(is_shard_folder(path) for path in config.data):
        return None
    if len(config.data) != 1:
        raise ValueError(
            f"--data mixes a token-shard folder with other inputs ({', '.join(config.data)}); pass the shard "
            "folder alone, or prepare all inputs into one folder with mambakit data prepare"
        )
    if config.task != "lm":
        raise ValueError(
            f"--task {config.task} reads JSONL files with 'text' and 'label', but {config.data[0]} contains unlabelled "
            "tokens; pass the JSONL files"
        )
    return open_shards(config.data[0])


def _load_or_train_tokenizer(config: TrainConfig, context, shards: ShardSet | None):
    """Return the run's tokenizer and where it came from.

    In order: ``--tokenizer``; the shard folder's; the ``--init-from`` folder's; one trained
    earlier in OUT/tokenizer; else rank 0 trains a byte-level BPE on ``--data``.
    """
    from mambakit.tokenizer import load_tokenizer, train_tokenizer
    from mambakit.train.documents import plain_text_files

    if config.tokenizer:
        return load_tokenizer(config.tokenizer), config.tokenizer
    if shards is not None:
        return load_tokenizer(shards.tokenizer_dir), shards.tokenizer_dir
    if config.init_from:
        if os.path.isfile(os.path.join(config.init_from, "tokenizer.json")):
            return load_tokenizer(config.init_from), config.init_from
        raise FileNotFoundError(
            f"{config.init_from} has no tokenizer.json; pass --tokenizer DIR with the tokenizer the model was "
            "trained with (the state-spaces/mamba-* models use EleutherAI/gpt-neox-20b)"
        )
    tokenizer_dir = os.path.join(config.out, "tokenizer")
    if not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")) and context.is_main:
        logger.info("training a byte-level BPE tokenizer with %d entries", config.vocab_size)
        with tempfile.TemporaryDirectory(dir=config.out, prefix=".tokenizer-text-") as scratch:
            train_tokenizer(plain_text_files(config.data, scratch), config.vocab_size, out_dir=tokenizer_dir)
    context.barrier()
    return load_tokenizer(tokenizer_dir), tokenizer_dir


def _make_task(config: TrainConfig, tokenizer, tokenizer_source: str, shards: ShardSet | None):
    if config.task == "classify":
        from mambakit.train.classify_task import ClassificationTask

        return ClassificationTask(config, tokenizer)
    from mambakit.train.lm_task import LanguageModelTask

    return LanguageModelTask(config, tokenizer, tokenizer_source, shards)


def _scan_backend(config: TrainConfig, context, device: torch.device) -> str:
    """Return the scan backend to train with; FSDP on CPUs needs the reference scan."""
    if not (config.fsdp and context.active and device.type == "cpu" and config.backend in ("auto", "cpu")):
        return config.backend
    # FSDP frees gathered weights by resizing their storage to zero, and the numba kernels take
    # numpy views of D and the dt bias, which makes that storage fixed-size.
    reason = "the numba CPU scan cannot run under --fsdp on CPUs"
    if config.backend == "cpu":
        raise ValueError(f"{reason}; use --backend reference or auto, or train without --fsdp")
    logger.warning("%s; using the reference scan, which is slower", reason)
    return "reference"


def _clip_gradients(model, max_norm: float) -> float:
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return norm.item()


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train a model with the settings in ``config`` and return a summary (losses, tokens/s, paths).

    Under torchrun every process calls this; each returns a summary, and only rank 0's has the
    validation metrics.
    """
    config.validate()
    config.betas = tuple(config.betas)
    context = distributed.setup(config.device)
    try:
        return _train(config, resume, progress, context)
    finally:
        context.close()


def _train(config: TrainConfig, resume: bool, progress: bool, context) -> dict:
    os.makedirs(config.out, exist_ok=True)
    checkpoint_dir = os.path.join(config.out, "checkpoints")
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    config_path = os.path.join(config.out, "train_config.json")
    device = context.device

    state = load_latest_checkpoint(checkpoint_dir) if resume else None
    if resume and state is None and context.is_main:
        logger.warning("--resume: no checkpoint in %s, starting from step 0", checkpoint_dir)
    if state is not None:
        saved = TrainConfig(**json.loads(state["train_config"]))
        saved.betas = tuple(saved.betas)
        check_resume_config(saved, config, state.get("world_size", 1), context.world_size)
    elif context.is_main and os.path.exists(metrics_path):
        os.remove(metrics_path)  # a fresh run in a reused folder starts a fresh log

    shards = _open_shard_data(config)
    tokenizer, tokenizer_source = _load_or_train_tokenizer(config, context, shards)
    task = _make_task(config, tokenizer, tokenizer_source, shards)

    # Build the model on every process from the same seed, so all start from the same weights.
    torch.manual_seed(config.seed)
    if state is not None:
        model = task.restore_model(state)
        model.load_state_dict(state["model"])
    else:
        model = task.new_model(tokenizer)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_source} has {tokenizer.vocab_size} tokens but the model's embedding has "
            f"{model.config.vocab_size} rows; use the tokenizer the run started with"
        )
    model.scan_backend = _scan_backend(config, context, device)
    model.gradient_checkpointing = config.grad_checkpointing
    model.train()

    no_decay = no_weight_decay_names(model)
    model.to(device)
    wrapped = distributed.wrap_model(model, context, config.fsdp)
    # The bare model's parameter names: DDP would prefix them with "module.", and FSDP2 keeps them.
    optimizer, names = build_optimizer(model, no_decay, config.lr, config.betas, config.weight_decay)
    streams = DataStreams(config.seed, context.rank, config.grad_accum)
    start = 0
    if state is not None:
        load_optimizer_state(wrapped, optimizer, names, state["optimizer"])
        restore_streams(streams, state, config.grad_accum * context.world_size, context)
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
    del state  # the checkpoint's tensors are copied; free them for the run
    if context.is_main and start > 0:
        truncate_metrics(metrics_path, start)
    if context.is_main:
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(dataclasses.asdict(config), handle, indent=2)

    # Under DDP the bare model gives the same validation without communication, so only rank 0
    # evaluates; FSDP needs every process in each forward pass.
    sharded = distributed.is_sharded(wrapped)
    eval_model = wrapped if sharded else model
    evaluates = context.is_main or sharded

    def precision():
        return autocast(config.dtype, device)

    if context.is_main:
        logger.info(
            "training %d parameters for %d steps of %d processes x %d x %d sequences of %d tokens",
            model.num_parameters(), config.steps, context.world_size, config.grad_accum, config.batch_size,
            config.seq_len,
        )
    bar = tqdm(total=config.steps, initial=start, disable=not (progress and context.is_main), desc="train", unit="step")
    last_validation = None
    losses = []
    window_start = time.perf_counter()
    window_tokens = 0
    for step in range(start, config.steps):
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr

        step_loss = 0.0
        for micro_batch in range(config.grad_accum):
            batch = tuple(tensor.to(device, non_blocking=True) for tensor in task.sample(streams[micro_batch]))
            window_tokens += task.tokens(batch)
            with distributed.gradient_sync(wrapped, micro_batch == config.grad_accum - 1):
                with precision():
                    loss = task.loss(wrapped, batch) / config.grad_accum
                loss.backward()
            step_loss += loss.item()
        step_loss = context.mean(step_loss)
        if not math.isfinite(step_loss):
            raise FloatingPointError(
                f"loss became {step_loss} at step {step}; lower --lr or check the data, then resume "
                "from the last checkpoint"
            )
        grad_norm = _clip_gradients(wrapped, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        done = step + 1

        if done % config.log_every == 0 or done == config.steps:
            elapsed = time.perf_counter() - window_start
            tokens_per_second = context.mean(window_tokens) * context.world_size / max(elapsed, 1e-9)
            if context.is_main:
                write_metrics(metrics_path, {"step": done, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                                             "tokens_per_second": tokens_per_second})
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_second:.0f}")
            window_start, window_tokens = time.perf_counter(), 0
        if (done % config.eval_every == 0 or done == config.steps) and evaluates:
            metrics = task.evaluate(eval_model, device, precision)
            if metrics is not None and context.is_main:
                last_validation = metrics
                write_metrics(metrics_path, {"step": done, **metrics})
                logger.info("step %d: validation loss %.4f", done, metrics["validation_loss"])
        if done % config.checkpoint_every == 0 or done == config.steps:
            training_state = collect_training_state(
                wrapped, model, optimizer, names, done, streams, task, config, context
            )
            if context.is_main:
                save_checkpoint(training_state, checkpoint_dir, done, config.keep_checkpoints)
            del training_state
        bar.update(1)
    bar.close()

    model_dir = os.path.join(config.out, "model")
    final_weights = full_model_state(wrapped) if sharded else None
    if context.is_main:
        export = model
        if sharded:
            # The sharded parameters cannot be saved as they are, so rebuild a plain copy on the CPU.
            settings = {"model_config": dataclasses.asdict(model.config), "task": task.checkpoint_extras()}
            export = task.restore_model(settings)
            export.load_state_dict(final_weights)
        export.eval()
        task.export(export, tokenizer, model_dir)
        plot_losses(metrics_path, os.path.join(config.out, "loss.png"))
    context.barrier()
    validation = last_validation or {}
    return {
        "train_losses": losses,
        "final_train_loss": losses[-1] if losses else None,
        "validation_loss": validation.get("validation_loss"),
        **{k: v for k, v in validation.items() if k != "validation_loss"},
        "parameters": model.num_parameters(),
        "processes": context.world_size,
        "model_dir": model_dir,
    }
