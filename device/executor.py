"""Starting one stream task on a card: resolve its buffer references, compute, model latency.

:class:`Executor` is the card's executor. It owns the exec bindings cache and the clients' host
mappings, and shares the card's HBM segment, allocator, ownership table (allocation offset ->
(client, serial)) and model table by reference: the card's request ops change those, and the
executor reads them when a task starts.

Every address a task names is checked against the card's allocator before a byte is touched: a
pointer of another card or an old epoch fails the task with 107000; a freed block, a range
running past its block, or a block another client allocated (``owners``) fails it with 507053
(ACL_ERROR_RT_DEVICE_MEM_ERROR), the code of a freed range: to a client, memory it does not own
is memory it never had, and reading or writing it would break isolation between the processes
sharing the card. Exec bindings are checked once and cached per (client, model, buffers) until
any free (:meth:`Executor.forget_bindings`) clears the cache.

A deferred result (modelled latency: computed at start, written at completion) carries a
*lease* on each destination: the allocation's serial number, or the very host mapping it views.
At completion the card writes only if every lease still holds; memory freed in between (by the
client, its departure, a reset) may belong to someone else by then, so the task fails with
507053 (ACL_ERROR_RT_DEVICE_MEM_ERROR) instead of writing into it.

Clients' pinned host segments are mapped per client (``attached[(client, name)]``): names are
chosen by each client process, so one client's mapping is never served to another.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_ID_INVALID,
    ACL_ERROR_RT_DEVICE_MEM_ERROR,
    ACL_ERROR_RT_MODEL_EXECUTE,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_SUCCESS,
)
from core.protocol import TaskKind
from device.card_spec import CardSpec
from device.kernels import typed_view
from device.memory import Allocator, HbmSegment, decode_ptr
from device.model_spec import ModelSpec
from device.models import modelled_duration_s
from device.streams import Task

__all__ = [
    "Executor",
    "Binding",
    "Publish",
    "BadAddress",
    "FreedUnderTask",
    "Lease",
    "Owners",
    "ModelTable",
    "host_segment_prefix",
]

logger = logging.getLogger(__name__)

_flat = itertools.chain.from_iterable

_MAX_BINDINGS = 4096  # cached exec bindings per card (cleared on any free)

Lease = tuple  # ("hbm", block start, serial) | ("host", (client, name), segment)
Owners = dict[int, tuple[bytes, int]]  # allocation offset -> (client, allocation serial)
ModelTable = dict[int, tuple[ModelSpec, Any, bytes]]  # handle -> (spec, kernel, client)


class BadAddress(Exception):
    """A task named memory the card cannot let it touch."""

    code = ACL_ERROR_RT_PARAM_INVALID


class FreedUnderTask(BadAddress):
    """A task's memory on this card was freed after the task was queued (the client checks
    every pointer at submission): a device memory fault, reported at the next sync."""

    code = ACL_ERROR_RT_DEVICE_MEM_ERROR


class Binding(NamedTuple):
    """An exec task's typed input and output arrays on device memory."""

    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


def _view(segment: HbmSegment, offset: int, nbytes: int) -> np.ndarray:
    """``segment.view`` with an out-of-segment range (e.g. a zero-byte reference far past the
    end, which skips the allocator check) failing the task instead of the card."""
    try:
        return segment.view(offset, nbytes)
    except ValueError as exc:
        raise BadAddress(str(exc)) from None


def host_segment_prefix(farm_id: str, client: bytes) -> str | None:
    """The name prefix of ``client``'s own pinned host segments, or None for an identity that
    names no process. A client's identity is ``c<pid>-<token>`` and its segments
    ``npufarm-<farm>-h<pid>-...`` (client/memory.py), so a card maps for a client only the
    segments that client's process created, never another client's."""
    head, sep, _ = client.partition(b"-")
    if not sep or head[:1] != b"c" or not head[1:].isdigit():
        return None
    return f"npufarm-{farm_id}-h{int(head[1:])}-"


def body_outputs(task: Task, spec: ModelSpec) -> list:
    """The ``[ptr, nbytes]`` references of an exec task's model outputs."""
    return task.body["o"][: len(spec.outputs)]


class Executor:
    """Runs tasks on one card's memory (see the module docstring for what it owns)."""

    def __init__(
        self,
        spec: CardSpec,
        segment: HbmSegment,
        allocator: Allocator,
        owners: Owners,
        models: ModelTable,
        rng: np.random.Generator,
    ) -> None:
        self.spec = spec
        self.segment = segment
        self.allocator = allocator
        self.owners = owners  # the card's, shared: request ops change it
        self.models = models  # the card's, shared: request ops change it
        self.rng = rng  # modelled-latency jitter
        self.bindings: dict[tuple, Binding] = {}  # exec buffer views, checked once
        self.attached: dict[tuple[bytes, str], HbmSegment] = {}  # (client, name): host segments

    # -- memory a task names -----------------------------------------------------------------
    def device_view(self, client: bytes, ptr: int, nbytes: int) -> np.ndarray:
        decoded = decode_ptr(ptr)
        if decoded is None:
            raise BadAddress(f"{ptr:#x} is not a device pointer")
        device_id, epoch, offset = decoded
        if device_id != self.spec.device_id or epoch != self.spec.epoch & 0xFF:
            raise BadAddress(f"{ptr:#x} belongs to device {device_id} epoch {epoch}")
        self.check_owned(client, offset, nbytes)
        return _view(self.segment, offset, nbytes)

    def check_owned(self, client: bytes, offset: int, nbytes: int) -> None:
        """Raise unless ``[offset, offset + nbytes)`` lies inside one live allocation of
        ``client`` (a zero-byte reference touches nothing and is not checked)."""
        if not nbytes:
            return
        block = self.allocator.block_at(offset)
        if block is None or nbytes < 0 or offset + nbytes > block[0] + block[1]:
            raise FreedUnderTask(f"{offset:#x}+{nbytes} is not inside a live allocation")
        owner = self.owners.get(block[0])
        if owner is None or owner[0] != client:
            raise FreedUnderTask(f"{offset:#x}+{nbytes} is another client's allocation")

    def _check_host_segment(self, client: bytes, name: object) -> str:
        prefix = host_segment_prefix(self.spec.farm_id, client)
        if not isinstance(name, str) or prefix is None or not name.startswith(prefix):
            raise BadAddress(f"segment {name!r} is not host memory of this client")
        return name

    def read_host_bytes(self, client: bytes, name: str, offset: int, nbytes: int) -> bytes:
        """A copy of ``nbytes`` at ``offset`` of a client's pinned host segment ``name`` (a
        model's bytes on their way to a load), without keeping the segment mapped."""
        self._check_host_segment(client, name)
        try:
            segment = HbmSegment.attach(name)
        except (OSError, ValueError) as exc:
            raise BadAddress(f"cannot attach {name!r}: {exc}") from None
        try:
            return _view(segment, int(offset), int(nbytes)).tobytes()
        finally:
            segment.close()

    def segment_view(self, client: bytes, ref: list, nbytes: int) -> np.ndarray:
        """A view on ``[segment name, offset]``: this card's HBM or ``client``'s pinned host
        memory (mapped on first use, until the client detaches it or leaves)."""
        name, offset = ref
        if name == self.segment.name:
            self.check_owned(client, offset, nbytes)
            return _view(self.segment, offset, nbytes)
        segment = self.attached.get((client, name))
        if segment is None:
            self._check_host_segment(client, name)  # (never another client's, nor a card's HBM)
            try:
                segment = self.attached[(client, name)] = HbmSegment.attach(name)
            except (OSError, ValueError) as exc:  # ValueError: a malformed or empty segment
                raise BadAddress(f"cannot attach {name!r}: {exc}") from None
        return _view(segment, offset, nbytes)

    # -- leases of deferred writes -------------------------------------------------------------
    def _hbm_lease(self, offset: int) -> Lease:
        block = self.allocator.block_at(offset)
        owner = self.owners.get(block[0]) if block is not None else None
        return ("hbm", block[0] if block else -1, owner[1] if owner is not None else -1)

    def _ref_lease(self, client: bytes, ref: list) -> Lease:
        name, offset = ref
        if name == self.segment.name:
            return self._hbm_lease(offset)
        return ("host", (client, name), self.attached.get((client, name)))

    def lease_holds(self, lease: Lease) -> bool:
        """True while the memory a lease was taken on is still the same allocation/mapping."""
        kind, key, token = lease
        if kind == "hbm":
            owner = self.owners.get(key)
            return owner is not None and owner[1] == token
        return token is not None and self.attached.get(key) is token

    # -- what the card tells it ------------------------------------------------------------------
    def forget_bindings(self) -> None:
        """Memory was freed: no cached binding may be trusted any more."""
        self.bindings.clear()

    def detach_host(self, client: bytes, name: str) -> None:
        """Unmap ``client``'s host segment ``name`` (nothing if it was not mapped)."""
        segment = self.attached.pop((client, name), None)
        if segment is not None:
            segment.close()

    def drop_client(self, client: bytes) -> int:
        """A client left: unmap its host segments; how many there were."""
        keys = [key for key in self.attached if key[0] == client]
        for key in keys:
            self.attached.pop(key).close()
        return len(keys)

    def close(self) -> None:
        for segment in self.attached.values():
            segment.close()
        self.attached.clear()

    # -- tasks ---------------------------------------------------------------------------------
    def start(self, task: Task, defer: bool = False) -> tuple[int, float, Publish | None]:
        """Run ``task``'s real work now; return (ACL code, modelled duration in seconds,
        the deferred write or None).

        With ``defer`` the results are computed now but written to their destination only when
        the card calls the returned :class:`Publish` at the task's completion, so until then a
        reader that skipped the sync sees what was there before (or the client's poison), never
        early results.
        """
        body = task.body
        kind = body["k"]
        client = task.client
        try:
            if kind == TaskKind.EXECUTE:
                return self._execute(task, defer)
            if kind == TaskKind.COPY:
                n = body["n"]
                destination = self.segment_view(client, body["dst"], n)
                source = self.segment_view(client, body["src"], n)
                if defer:
                    lease = self._ref_lease(client, body["dst"])
                    return ACL_SUCCESS, 0.0, Publish([destination], [source.copy()], [lease])
                np.copyto(destination, source)
            elif kind == TaskKind.MEMSET:
                destination = self.segment_view(client, body["dst"], body["n"])
                value = np.uint8(body["v"] & 0xFF)
                if defer:
                    lease = self._ref_lease(client, body["dst"])
                    return ACL_SUCCESS, 0.0, Publish([destination], [value], [lease])
                destination.fill(value)
        except BadAddress as exc:
            # the caller learns it from the task's code at its sync; a log line per task would
            # let one buggy (or fuzzing) client flood the card's log
            logger.debug("card %d: task %d rejected: %s", self.spec.device_id, task.task_id, exc)
            return exc.code, 0.0, None
        return ACL_SUCCESS, 0.0, None

    def _execute(self, task: Task, defer: bool) -> tuple[int, float, Publish | None]:
        entry = self.models.get(task.body["m"])
        if entry is None or entry[2] != task.client:
            return ACL_ERROR_GE_EXEC_MODEL_ID_INVALID, 0.0, None
        spec, kernel, _ = entry
        try:
            bound = self._bind(task, spec)
        except BadAddress as exc:
            logger.warning("card %d: task %d: %s", self.spec.device_id, task.task_id, exc)
            return exc.code, 0.0, None
        if bound is None:
            return ACL_ERROR_RT_PARAM_INVALID, 0.0, None
        inputs, outputs = bound
        targets = [np.empty_like(y) for y in outputs] if defer else outputs
        try:
            kernel.compute(inputs, targets)
        except Exception:  # a kernel bug must fail the task, never the card
            logger.exception("card %d: kernel %s failed", self.spec.device_id, spec.name)
            return ACL_ERROR_RT_MODEL_EXECUTE, 0.0, None
        commit = None
        if defer:
            leases = [self._hbm_lease(decode_ptr(ptr)[2]) for ptr, _ in body_outputs(task, spec)]
            commit = Publish(outputs, targets, leases)
        return ACL_SUCCESS, self._modelled_duration_s(spec), commit

    def _modelled_duration_s(self, spec: ModelSpec) -> float:
        card = self.spec
        if card.time_scale == 0:
            return 0.0
        duration_s = modelled_duration_s(
            spec.latency, spec, card.speed_factor, card.time_scale, self.rng
        )
        if card.jitter_sigma > 0 and duration_s > 0:
            duration_s *= float(self.rng.lognormal(0.0, card.jitter_sigma))
        return duration_s

    def _bind(self, task: Task, spec: ModelSpec) -> Binding | None:
        """Typed input/output arrays for an exec task, checked once per distinct binding and
        cached until the card frees memory (pipelines reuse the same buffers task after task).
        None when the task names too few or too small buffers; BadAddress when a buffer is not
        the client's live memory."""
        body = task.body
        # (client, model, input ptr/size pairs flattened, None, outputs'): built once per task
        key = (task.client, body["m"], *_flat(body["i"]), None, *_flat(body["o"]))
        bound = self.bindings.get(key)
        if bound is not None:
            return bound
        if len(body["i"]) < len(spec.inputs) or len(body["o"]) < len(spec.outputs):
            return None
        views = []
        for refs, tensors in ((body["i"], spec.inputs), (body["o"], spec.outputs)):
            typed = []
            for (ptr, nbytes), tensor in zip(refs, tensors):
                if nbytes < tensor.nbytes:
                    return None
                typed.append(typed_view(self.device_view(task.client, ptr, nbytes), tensor))
            views.append(typed)
        if len(self.bindings) >= _MAX_BINDINGS:
            self.bindings.clear()
        bound = self.bindings[key] = Binding(views[0], views[1])
        return bound


class Publish:
    """Writes a deferred task's results to their destinations when the task completes, if the
    destinations are still what they were at the start (``holds``). ``post`` runs after the
    write (an injected corruption)."""

    __slots__ = ("destinations", "results", "leases", "post")

    def __init__(self, destinations: list[np.ndarray], results: list, leases: list[Lease]) -> None:
        self.destinations = destinations
        self.results = results
        self.leases = leases
        self.post: Callable[[Publish], None] | None = None

    def holds(self, executor: Executor) -> bool:
        return all(executor.lease_holds(lease) for lease in self.leases)

    def __call__(self) -> None:
        for destination, result in zip(self.destinations, self.results):
            np.copyto(destination, result)
        if self.post is not None:
            self.post(self)
