"""Resuming: which settings may change, and the full state that a checkpoint stores and restores.

A checkpoint contains the step, the full model and optimizer state (``full_state``), the state of
every data stream (``streams``), the CPU RNG state, the model and training settings, the number
of processes and the task's extras (the class labels of a classifier).
"""

from __future__ import annotations

import dataclasses
import json
import logging

import torch

from mambakit.train.full_state import full_model_state, full_optimizer_state
from mambakit.train.streams import DataStreams

logger = logging.getLogger(__name__)


def check_resume_config(saved, config, saved_processes: int = 1, processes: int = 1) -> None:
    """Raise ValueError when ``config`` changes a setting of the saved run that a resume must keep.

    Schedule length, logging, checkpoint, device and path settings may change. ``grad_accum``
    may change with the number of processes as long as ``grad_accum * processes``, the number of
    micro-batches in a step, stays the same.
    """
    changeable = {
        "steps", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "backend", "data", "out",
        "grad_accum", "device", "fsdp", "grad_checkpointing",
    }  # fmt: skip
    differing = [
        f"{f.name} ({getattr(saved, f.name)!r} -> {getattr(config, f.name)!r})"
        for f in dataclasses.fields(saved)
        if f.name not in changeable and getattr(saved, f.name) != getattr(config, f.name)
    ]
    saved_streams, streams = saved.grad_accum * saved_processes, config.grad_accum * processes
    if saved_streams != streams:
        hint = ""
        if saved_streams % processes == 0:
            plural = "es" if processes > 1 else ""
            hint = f"; on {processes} process{plural} pass --grad-accum {saved_streams // processes}"
        differing.append(
            f"grad_accum x processes ({saved.grad_accum} x {saved_processes} -> {config.grad_accum} x {processes}, "
            f"the global batch must stay {saved_streams} micro-batches{hint})"
        )
    if differing:
        raise ValueError(
            "--resume with settings that differ from the saved run: " + ", ".join(differing)
            + "; rerun with the original settings or choose a new --out folder"
        )


def collect_training_state(model, raw_model, optimizer, names, step, streams, task, config, context) -> dict:
    """Collect the full state of the run; every process must call it, and rank 0 gets all of it."""
    stream_states = {}
    for states in context.gather(streams.states()):
        stream_states.update(states)
    ordered = [stream_states[index] for index in sorted(stream_states)]
    return {
        "step": step,
        "model": full_model_state(model),
        "optimizer": full_optimizer_state(model, optimizer, names),
        "data_generator": ordered[0],
        "data_generators": ordered,
        "torch_rng": torch.get_rng_state(),
        "model_config": dataclasses.asdict(raw_model.config),
        "train_config": json.dumps(dataclasses.asdict(config)),
        "world_size": context.world_size,
        "task": task.checkpoint_extras(),
    }


def restore_streams(streams: DataStreams, state: dict, total: int, context) -> None:
    # Checkpoints before data_generators existed hold one generator that served every micro-batch.
    states = state.get("data_generators") or [state["data_generator"]]
    if len(states) != total and context.is_main:
        logger.warning(
            "the checkpoint has %d data streams but this run draws %d micro-batches per step; streams without a "
            "saved state start from their seeds, so the data order differs from an uninterrupted run",
            len(states), total,
        )
    streams.load(states)
