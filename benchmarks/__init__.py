"""npufarm benchmarks: raw transport/copy baselines (`raw`) and the farm benchmark (`core`)."""

__all__: list[str] = []
