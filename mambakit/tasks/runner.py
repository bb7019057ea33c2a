"""Train a small language model on a synthetic task and measure its accuracy.

Shape letters: b batch, T sequence length, V vocabulary.

``train_task`` builds a ``Mamba`` language model with either mixer, trains it with AdamW on
fresh batches of the task (every batch is new, so there is no overfitting to a fixed set) and
reports the accuracy at the answer positions on held-out batches, at the training length and
at any other lengths asked for.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mambakit.config import MIXERS, MambaConfig
from mambakit.models.mamba_lm import Mamba, parameter_groups
from mambakit.ops.selective_scan import last_backend
from mambakit.tasks.base import TaskBatch, make_generator
from mambakit.tasks.induction_heads import InductionHeads
from mambakit.tasks.selective_copying import SelectiveCopying

logger = logging.getLogger(__name__)

TASKS = {
    SelectiveCopying.name: SelectiveCopying,
    InductionHeads.name: InductionHeads,
}

# Evaluation batches come from this offset of the training seed, so they never repeat a
# training batch's random stream.
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class TaskResult:
    """Outcome of one ``train_task`` run.

    ``accuracy`` is the share of answer positions predicted correctly (argmax of the logits) on
    held-out batches at the training length; ``eval_accuracy`` maps each evaluated length to
    the same measure. ``history`` is the learning curve: one ``{"step", "loss", "accuracy"}``
    entry per logged step, measured on that step's training batch.
    """

    task: str
    mixer: str
    gated: bool
    steps: int
    seq_len: int
    accuracy: float
    eval_accuracy: dict[int, float] = field(default_factory=dict)
    chance_accuracy: float = 0.0
    final_loss: float = math.nan
    num_parameters: int = 0
    train_seconds: float = 0.0
    backend: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def build_task(task: str | SelectiveCopying | InductionHeads, seq_len: int | None = None):
    """Return a task object from its name (``TASKS``) or as given, with ``seq_len`` applied."""
    if isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        task = TASKS[task]()
    if seq_len is not None:
        task = task.with_length(seq_len)
    return task


def build_model(
    task, mixer: str, d_model: int = 64, n_layer: int = 2, d_state: int = 16, gated: bool = True
) -> Mamba:
    """Build a ``Mamba`` LM sized for ``task``'s vocabulary with the given mixer."""
    if mixer not in MIXERS:
        raise ValueError(f"invalid mixer {mixer!r}; expected one of {', '.join(MIXERS)}")
    config = MambaConfig(
        d_model=d_model,
        n_layer=n_layer,
        vocab_size=task.vocab_size,
        d_state=d_state,
        mixer=mixer,
        gated=gated,
    )
    return Mamba(config)


def masked_loss_and_hits(model: Mamba, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the mean cross-entropy over answer positions and a bool tensor of correct answers.

    Both come from one forward pass over ``batch.inputs`` (b, T); the hits have one entry per
    answer position.
    """
    logits = model(batch.inputs)  # (b, T, V)
    answer_logits = logits[batch.loss_mask]  # (answers, V)
    answers = batch.targets[batch.loss_mask]
    loss = F.cross_entropy(answer_logits.float(), answers)
    hits = answer_logits.argmax(dim=-1) == answers
    return loss, hits


@torch.no_grad()
def evaluate(model: Mamba, task, num_samples: int, batch_size: int, seed: int) -> float:
    """Return the accuracy over the answer positions of ``num_samples`` fresh sequences."""
    model.eval()
    generator = make_generator(seed)
    correct = 0
    total = 0
    remaining = num_samples
    while remaining > 0:
        size = min(batch_size, remaining)
        _, hits = masked_loss_and_hits(model, task.sample(size, seed=generator))
        correct += int(hits.sum())
        total += hits.numel()
        remaining -= size
    model.train()
    return correct / total


def _learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_task(
    task: str | SelectiveCopying | InductionHeads,
    mixer: str,
    steps: int,
    seq_len: int | None = None,
    gated: bool = True,
    batch_size: int = 32,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    warmup_steps: int | None = None,
    grad_clip: float = 1.0,
    d_model: int = 64,
    n_layer: int = 2,
    d_state: int = 16,
    seed: int = 0,
    eval_lengths: list[int] | None = None,
    eval_samples: int = 256,
    eval_batch_size: int = 32,
    progress: bool = True,
    log_every: int | None = None,
) -> TaskResult:
    """Train a small ``Mamba`` LM on a synthetic task and return its held-out accuracy.

    Args:
        task: a name from ``TASKS`` or a task object such as ``SelectiveCopying(seq_len=128)``.
        mixer: ``"mamba"`` (selective SSM) or ``"s4d"`` (LTI SSM with the same block structure).
        steps: optimizer steps, one fresh batch each.
        gated: keep the mixer's gate branch. False gives the "no gate" architecture of Gu and Dao (2023).
        seq_len: training length (the context length for Selective Copying); None keeps the
            task's own.
        batch_size: sequences per step.
        lr: peak AdamW learning rate, reached after ``warmup_steps`` and decayed by a cosine to
            a tenth of it.
        weight_decay: AdamW weight decay on matrices; A, D, Δ, biases and norms get none.
        warmup_steps: linear warmup steps; None uses a tenth of ``steps``.
        grad_clip: maximum gradient norm.
        d_model, n_layer, d_state: model size.
        seed: seeds the model initialisation, the training batches and the evaluation batches.
        eval_lengths: further lengths to evaluate the trained model at, for extrapolation.
        eval_samples: held-out sequences per evaluated length.
        eval_batch_size: sequences per evaluation forward pass; lower it for long lengths if
            memory is short.
        progress: show a tqdm progress bar.
        log_every: steps between entries of ``TaskResult.history``, which are also logged at
            INFO level; None logs about 50 times per run. The last step is always logged.

    Returns:
        ``TaskResult``. The Mamba mixer runs the selective scan with backend "auto", which is the
        numba CPU kernel for CPU tensors when numba works. ``backend`` records the one that ran.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if log_every is None:
        log_every = max(1, steps // 50)
    elif log_every < 1:
        raise ValueError(f"log_every must be at least 1, got {log_every}")
    task = build_task(task, seq_len)
    torch.manual_seed(seed)
    model = build_model(task, mixer, d_model=d_model, n_layer=n_layer, d_state=d_state, gated=gated)
    model.scan_backend = "auto"
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98))
    warmup = warmup_steps if warmup_steps is not None else max(1, steps // 10)
    generator = make_generator(seed)
    logger.info(
        "training %s%s on %s: %d parameters, %d steps of %d sequences at length %d",
        mixer, "" if gated else " (no gate)", task.name, model.num_parameters(), steps, batch_size, task.seq_len,
    )

    start = time.perf_counter()
    loss_value = math.nan
    history = []
    bar = tqdm(range(steps), disable=not progress, desc=f"{task.name} {mixer}", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps, lr, warmup)
        loss, hits = masked_loss_and_hits(model, task.sample(batch_size, seed=generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        loss_value = loss.item()
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{hits.float().mean().item():.2f}")
        if (step + 1) % log_every == 0 or step == steps - 1:
            train_accuracy = hits.float().mean().item()
            history.append({"step": step + 1, "loss": loss_value, "accuracy": train_accuracy})
            logger.info("step %d: loss %.4f, batch accuracy %.3f", step + 1, loss_value, train_accuracy)
    train_seconds = time.perf_counter() - start

    # The LTI mixer runs no scan, so the recorded backend only means something for Mamba.
    backend = last_backend() if mixer == "mamba" else None
    if mixer == "mamba" and backend != "cpu":
        logger.warning("the selective scan ran on backend %r, not the numba CPU kernel", backend)

    eval_seed = seed + EVAL_SEED_OFFSET
    accuracy = evaluate(model, task, eval_samples, eval_batch_size, eval_seed)
    eval_accuracy = {task.seq_len: accuracy}
    for length in eval_lengths or []:
        if length not in eval_accuracy:
            eval_accuracy[length] = evaluate(
                model, task.with_length(length), eval_samples, eval_batch_size, eval_seed
            )
        logger.info("%s %s at length %d: accuracy %.3f", task.name, mixer, length, eval_accuracy[length])

    return TaskResult(
        task=task.name,
        mixer=mixer,
        gated=gated,
        steps=steps,
        seq_len=task.seq_len,
        accuracy=accuracy,
        eval_accuracy=dict(sorted(eval_accuracy.items())),
        chance_accuracy=task.chance_accuracy,
        final_loss=loss_value,
        num_parameters=model.num_parameters(),
        train_seconds=train_seconds,
        backend=backend,
        history=history,
    )
