"""The emulated NPU card: its process and loop (card), request ops, stream scheduler, executor,
task runner, HBM memory and ownership, model spec, kernels, ``.om`` container and ``atc``.
Imports only :mod:`core`; farm/ starts cards, client/ reads their memory and model files."""

__all__: list[str] = []
