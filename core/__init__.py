"""The leaf every npufarm process shares: the wire protocol (every frame), ACL error codes and
the exception family, the config model and its loading (TOML into frozen dataclasses), fault
plans and the fault injector, validation helpers, and the state-file lookup.

Layer: the lowest (``[tool.importlinter]`` in pyproject.toml). It imports nothing of the
project; every other package (device, farm, client, acl, loadtest, npufarm, benchmarks) may
import it. Import the modules themselves (``core.config``, ``core.faults``, ...): this package
re-exports nothing.
"""

__all__: list[str] = []
