"""mambakit: Mamba selective state space models in PyTorch, fast on CPUs."""

from mambakit.config import ConfigError, MambaConfig
from mambakit.models.checkpoint import CheckpointError
from mambakit.models.mamba_lm import Mamba, parameter_groups
from mambakit.modules.cache import InferenceCache
from mambakit.ops.selective_scan import last_backend, selective_scan

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InferenceCache",
    "Mamba",
    "MambaConfig",
    "last_backend",
    "parameter_groups",
    "selective_scan",
]
