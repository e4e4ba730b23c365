"""The records behind the runtime's handles: streams, contexts, events, per-device state and
loaded models, as :class:`client.state.RuntimeState` keeps them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from client.tracks import StreamTrack
from device.models import ModelSpec

__all__ = ["Stream", "Context", "Event", "DeviceState", "LoadedModel"]


@dataclass(eq=False)
class Stream:
    handle: int
    context: Context
    track: StreamTrack
    sync_timeout_ms: int = -1  # exec config of execute_async_v2 since the last sync
    event_timeout_ms: int = -1


@dataclass(eq=False)
class Context:
    handle: int
    device_id: int
    default_stream: Stream | None = None
    streams: dict[int, Stream] = field(default_factory=dict)


@dataclass(eq=False)
class Event:
    handle: int
    device_id: int
    track: StreamTrack | None = None
    task_id: int = 0
    timeout_ms: int = -1


@dataclass
class DeviceState:
    device_id: int
    refs: int = 0
    default_context: Context | None = None
    streams: int = 0
    events: int = 0
    needs_restart: bool = False
    opening: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class LoadedModel:
    model_id: int
    device_id: int
    epoch: int
    card_handle: int
    spec: ModelSpec
    input_nbytes: tuple[int, ...] = ()
    output_nbytes: tuple[int, ...] = ()

    @classmethod
    def of(cls, model_id: int, device_id: int, epoch: int, handle: int, spec: ModelSpec):
        return cls(
            model_id,
            device_id,
            epoch,
            handle,
            spec,
            tuple(t.nbytes for t in spec.inputs),
            tuple(t.nbytes for t in spec.outputs),
        )
