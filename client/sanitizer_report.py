"""What the sync sanitizer reports: a :class:`Finding` per misuse, the error raised for it in
``"raise"`` mode, and the summary and JSON forms written at ``acl.finalize``.

Kept apart from the checker (:mod:`client.sanitizer`) so the result types can be read, built
from JSON and printed without the bookkeeping that finds them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core import errors
from core.errors import NpuFarmError

__all__ = ["FINDING_KINDS", "Finding", "SanitizerError", "json_text", "summary_text"]

FINDING_KINDS = (
    "read_before_sync",
    "write_while_read",
    "free_while_pending",
    "destroy_stream_pending",
    "unobserved_error",
)


@dataclass(frozen=True)
class Finding:
    """One sanitizer finding: what the caller did wrong, where, and against which task.

    ``stack``: the user frames of the offending call, innermost first (``"file:line in fn"``);
    ``submitted``: those of the task's submit."""

    kind: str
    call: str  # the API call at ``where``, e.g. "acl.rt.memcpy"
    device: int
    stream: int
    task: int
    where: str  # "path/to/user_file.py:LINE"
    message: str
    stack: tuple[str, ...] = ()
    submitted: tuple[str, ...] = ()

    def __post_init__(self) -> None:  # from JSON the stacks come back as lists
        object.__setattr__(self, "stack", tuple(self.stack))
        object.__setattr__(self, "submitted", tuple(self.submitted))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        origin = f" [submitted at {self.submitted[0]}]" if self.submitted else ""
        caller = f" called from {self.stack[1]}" if len(self.stack) > 1 else ""
        return (
            f"[{self.kind}] {self.call} at {self.where}{caller} (device {self.device}, stream "
            f"{self.stream}, task {self.task}): {self.message}{origin}"
        )

    def details(self) -> list[str]:
        """The stacks, one line each (for the summary)."""
        lines = []
        if self.stack:
            lines.append("call stack: " + " <- ".join(self.stack))
        if self.submitted:
            lines.append("submitted:  " + " <- ".join(self.submitted))
        return lines


class SanitizerError(NpuFarmError):
    """Raised in ``"raise"`` mode at the offending call; ``finding`` says what and where.

    The code is ``ACL_ERROR_INVALID_PARAM`` (100000): the caller misused the API.
    """

    def __init__(self, finding: Finding) -> None:
        super().__init__(
            f"sanitizer: {finding}",
            errors.ACL_ERROR_INVALID_PARAM,
            card=finding.device,
            stream=finding.stream,
            task=finding.task,
        )
        self.finding = finding


def summary_text(mode: str, findings: list[Finding], dropped: Mapping[str, int]) -> str:
    """Counts by kind, the bookkeeping dropped at its limits, then each finding with its
    stacks; ``none`` when clean."""
    if not findings:
        return f"npufarm sanitizer ({mode}): none"
    counts = Counter(f.kind for f in findings)
    lines = [f"npufarm sanitizer ({mode}): {len(findings)} finding(s)"]
    lines += [f"  {kind}: {counts[kind]}" for kind in FINDING_KINDS if counts[kind]]
    lines += [f"  dropped {what} at the limit: {n}" for what, n in sorted(dropped.items())]
    for finding in findings:
        lines.append(f"  {finding}")
        lines += [f"      {line}" for line in finding.details()]
    return "\n".join(lines)


def json_text(mode: str, findings: list[Finding], dropped: Mapping[str, int]) -> str:
    counts = Counter(f.kind for f in findings)
    return json.dumps(
        {
            "mode": mode,
            "counts": {kind: counts[kind] for kind in FINDING_KINDS},
            "dropped": dict(dropped),
            "findings": [finding.to_dict() for finding in findings],
        },
        indent=2,
    )
