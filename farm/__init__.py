"""The farm process and what talks to it: the broker (composed of its card, client, fault and
admin parts, the outbox and the ledger), the supervisor that starts :mod:`device` cards, the
card registry (pure), Prometheus metrics, the trace, and the admin client
(:mod:`farm.admin`: status, inject, trace, recover requests, used by every tool).

Layer (``[tool.importlinter]`` in pyproject.toml): above ``device``, beside ``client``. It may
import ``core`` and ``device``; never ``client`` (its peer), ``acl``, ``loadtest`` or
``npufarm``. Import the modules themselves: this package re-exports nothing.
"""

__all__: list[str] = []
