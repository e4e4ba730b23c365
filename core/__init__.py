"""The leaf every process shares: wire protocol, error codes and exceptions, config model,
fault plan and injector, state-file lookup. Imports nothing of the project."""
