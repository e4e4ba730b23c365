"""The ``npufarm`` command and its tools: argument parsing and the farm subcommands
(:mod:`npufarm.cli`), ``npufarm run`` (:mod:`npufarm.run`) and the status view
(:mod:`npufarm.status_view`).

Layer (``[tool.importlinter]`` in pyproject.toml): the top, beside ``benchmarks``. It may import
every other project package (``loadtest``, ``acl``, ``client``, ``farm``, ``device``, ``core``)
and none may import it. :mod:`npufarm.cli` defers the heavy subcommand modules to their
handlers (see its docstring). Import the modules themselves: this package re-exports nothing.
"""

__all__: list[str] = []
