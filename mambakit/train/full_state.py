"""Full, unsharded model and optimizer state, the same on disk for one process, DDP and FSDP.

Checkpoints store ``model.state_dict()`` of the bare model and the optimizer state in
``torch.optim.Optimizer.state_dict()`` form, whose parameters are numbered in the order of the
AdamW groups. Any number of processes, with or without FSDP, can resume from them.

Under FSDP each process stores a shard of every tensor. ``torch.distributed.checkpoint.state_dict``
gathers and scatters the full tensors. Its optimizer state is keyed by parameter name, so the
functions here translate the names to and from the group order.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mambakit.train.distributed import is_sharded, unwrap


def named_parameter_groups(
    model: nn.Module, weight_decay: float, no_decay: set[str]
) -> tuple[list[dict], list[str]]:
    """Split parameters into AdamW groups by name; returns the groups and the names in group order.

    The groups and their order are those of ``mamba_lm.parameter_groups``. Passing the names of
    the parameters without weight decay, ``no_decay``, taken before wrapping, matters for FSDP:
    ``fully_shard`` replaces the parameters and drops the ``_no_weight_decay`` marks on A_log and D.
    """
    decay_params, decay_names, other_params, other_names = [], [], [], []
    seen = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if name in no_decay:
            other_params.append(parameter)
            other_names.append(name)
        else:
            decay_params.append(parameter)
            decay_names.append(name)
    groups = [
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": other_params, "weight_decay": 0.0},
    ]
    return groups, decay_names + other_names


def build_optimizer(model: nn.Module, no_decay: set[str], lr: float, betas, weight_decay: float):
    """Return AdamW over ``model``'s parameters and the parameter names in optimizer order."""
    groups, names = named_parameter_groups(model, weight_decay, no_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=False)
    return optimizer, names


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the bare model's full state dict on the CPU; under FSDP complete only on rank 0.

    Under FSDP every process must call it, because it gathers the shards.
    """
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_options())
    return {name: tensor.detach().cpu() for name, tensor in unwrap(model).state_dict().items()}


def full_optimizer_state(model: nn.Module, optimizer, names: list[str]) -> dict:
    """Return the optimizer's full state in ``state_dict()`` form; under FSDP complete only on rank 0."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_options())
    if not by_name:
        return {}  # the processes other than rank 0 receive nothing
    index_of = {name: index for index, name in enumerate(names)}
    return {
        "state": {index_of[name]: value for name, value in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index_of[name] for name in group["params"]]} for group in by_name["param_groups"]
        ],
    }


def load_optimizer_state(model: nn.Module, optimizer, names: list[str], state: dict) -> None:
    """Load a full optimizer state in ``state_dict()`` form, scattering it under FSDP."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    by_name = {
        "state": {names[index]: value for index, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[index] for index in group["params"]]} for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
