"""npufarm benchmarks: raw transport/copy baselines (`raw`), the farm benchmark (`core`), and an
A/B runner that compares a benchmark between two git refs (`compare`)."""

__all__: list[str] = []
