"""Text generation: sampling, the generation loop and streaming detokenization."""

from mambakit.generation.generate import generate, generate_ids, iter_generate_ids, stream_generate
from mambakit.generation.sampling import SamplingConfig

__all__ = ["SamplingConfig", "generate", "generate_ids", "iter_generate_ids", "stream_generate"]
