"""The load tester (``npufarm bench``, ``npufarm report``, ``npufarm demo``): the load generator
and its worker processes (typed messages), the run plan, the result schema, summaries and
files, the terminal render, the plots, and the demo; with ``--ray``, the same workers as Ray
actors over a cluster with a farm per node, node agents for faults, and mergeable histograms.

Layer (``[tool.importlinter]`` in pyproject.toml): above ``acl``. It may import ``acl``,
``client``, ``farm``, ``device`` and ``core``; never ``npufarm`` or ``benchmarks``. matplotlib
(the ``plot`` extra) is imported only when a figure is drawn (:mod:`loadtest.plot_style`), Ray
(the ``ray`` extra) only on the ``--ray`` paths (:mod:`loadtest.ray_nodes`).
Import the modules themselves: this package re-exports nothing.
"""

__all__: list[str] = []
