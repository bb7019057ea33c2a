"""Several processes: the process group from torchrun's environment, DDP and FSDP wrapping.

``torchrun --nproc_per_node N`` starts N copies of the command and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. ``setup`` reads them and
calls ``torch.distributed.init_process_group`` with the gloo backend on CPUs and nccl on CUDA
devices. Without them, training runs in one process and nothing here communicates.

``wrap_model`` puts the model under ``DistributedDataParallel``, where every process keeps all
weights and the gradients are averaged. With ``fsdp`` it applies FSDP2's
``torch.distributed.fsdp.fully_shard`` instead. Each residual block is then one unit that
gathers its weights before use and shards them again afterwards, and the root unit contains the
embedding, the final norm and the head.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

logger = logging.getLogger(__name__)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Return the device that ``name`` ("auto", "cpu", "cuda" or "cuda:N") means for this process.

    "auto" and "cuda" choose ``cuda:LOCAL_RANK`` when CUDA is available; "auto" falls back to
    the CPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ValueError(f"invalid device {name!r}; expected auto, cpu, cuda or cuda:N")
    return device


@dataclass
class Distributed:
    """This process's place in the run: rank, number of processes, device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def active(self) -> bool:
        """Return whether a process group exists, so that every process must call each collective."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Return whether this process writes checkpoints, metrics, logs and the final model."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Return the mean of ``value`` over all processes."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.item() / self.world_size

    def gather(self, value) -> list:
        """Return every process's picklable ``value``, in rank order."""
        if not self.active:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def _collective_device(self) -> torch.device:
        # nccl communicates CUDA tensors only.
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        """Destroy the process group if ``setup`` created it."""
        if self.owns_group and self.active:
            dist.destroy_process_group()
            self.owns_group = False


def setup(device_name: str = "auto") -> Distributed:
    """Join the process group that torchrun describes in the environment, or run alone."""
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    elif dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        return Distributed(device=resolve_device(device_name))

    # NOTE: only the gloo path on CPUs has been run; the nccl path on CUDA devices is untested.
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns_group = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        owns_group = True
        logger.info("joined a process group of %d (%s) as rank %d on %s", world_size, backend, rank, device)
    return Distributed(rank, world_size, local_rank, device, owns_group)


def wrap_model(model: nn.Module, context: Distributed, fsdp: bool) -> nn.Module:
    """Return ``model`` (already on the device) wrapped for data parallelism, or as it is alone.

    The model needs ``backbone.layers``, the residual blocks that FSDP shards one by one.
    """
    if not context.active:
        if fsdp:
            logger.warning("--fsdp has no effect in a single process; launch with torchrun --nproc_per_node N")
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model.backbone.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def gradient_sync(model: nn.Module, enabled: bool):
    """Return a context in which backward passes average gradients across processes only if ``enabled``.

    Gradient accumulation skips the communication on all micro-batches but the last.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def unwrap(model: nn.Module) -> nn.Module:
    """Return the module inside a DDP wrapper; FSDP2 modules are their own model."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """Return whether ``model`` was wrapped with FSDP2's ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
