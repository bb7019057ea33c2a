"""Reference models that Mamba is compared against in the benchmarks."""

from mambakit.baselines.transformer import (
    KVCache,
    ParameterMatch,
    TransformerConfig,
    TransformerLM,
    matching_transformer_config,
)

__all__ = ["KVCache", "ParameterMatch", "TransformerConfig", "TransformerLM", "matching_transformer_config"]
