"""Benchmarks run by ``mambakit bench``.

``add_bench_parser`` and ``run_scaling`` live in ``mambakit.bench.scaling``. They are imported
on first access, so that ``python -m mambakit.bench.scaling`` does not import the module twice.
"""

__all__ = ["add_bench_parser", "run_scaling"]


def __getattr__(name: str):
    if name in __all__:
        from mambakit.bench import scaling

        return getattr(scaling, name)
    raise AttributeError(f"module 'mambakit.bench' has no attribute {name!r}")
