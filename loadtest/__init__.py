"""The load tester: load generator, workers, report schema and files, render, plots, demo."""
