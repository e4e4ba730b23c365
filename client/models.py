"""The model half of the ACL API (``acl.mdl``): loading, descriptions, datasets, execution.

Models load onto the current device (the card builds the kernel and its seeded weights once);
execution is a stream task naming device pointers. The sync forms (``execute``, ``execute_v2``)
are an async submit followed by a wait, exactly as the runtime layers them on hardware. A part
of the process-wide runtime (see :mod:`client.runtime`).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from typing import Any

from client.conventions import api, int_arg
from client.handles import ExecConfig, sync_timeout_error
from client.records import LoadedModel
from client.state import RuntimeState
from client.streams import StreamApi
from client.tracks import StreamTrack
from core.errors import (
    ACL_ERROR_GE_EXEC_MODEL_ID_INVALID,
    ACL_ERROR_GE_FAILURE,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_RT_STREAM_CONTEXT,
    ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
    ACL_SUCCESS,
    AclError,
    NpuFarmError,
)
from core.protocol import TASK_STAMP, TaskKind
from device.memory import decode_ptr, is_device_ptr
from device.models import ModelSpec, load_model_file, parse_model

__all__ = [
    "ACL_DATA_WITHOUT_AIPP",
    "ACL_ERROR_GE_AIPP_NOT_EXIST",
    "ACL_INVALID_NODE_INDEX",
    "ModelApi",
    "aipp_data_size",
]

logger = logging.getLogger(__name__)

ACL_DATA_WITHOUT_AIPP = 0
"""aclmdlInputAippType of an input without AIPP (acl_mdl.h)."""
ACL_INVALID_NODE_INDEX = 0xFFFFFFFF
"""acl_mdl.h: the dynamic-AIPP attached-data index of an input without dynamic AIPP."""
ACL_ERROR_GE_AIPP_NOT_EXIST = 145015
"""aclmdlGetFirstAippInfo on an input that has no AIPP configured (ge_error_codes.h)."""

# GE's dynamic-AIPP parameter block (dynamic_aipp.h): a 64-byte head, then 96 bytes per batch
# (aclmdlGetAippDataSize: batchSize * sizeof(kAippDynamicBatchPara) + the head).
_AIPP_HEAD_BYTES = 64
_AIPP_BATCH_BYTES = 96
_SIZE_T_MAX = 2**64 - 1

_BINDING = "execute binding"  # key prefix of a cached binding in RuntimeState.refs_cache
_MAX_CACHED = 4096  # entries of refs_cache (refs and bindings) before it is emptied
_SYNC_QUEUE_OFFSET = 8  # handles step by 16 (client.state): handle + 8 is never a handle


def aipp_data_size(batch_size: Any) -> int:
    """Bytes of the dynamic-AIPP input for ``batch_size`` images, as aclmdlGetAippDataSize
    computes them; 0 (or overflowing size_t) → 100000."""
    batch = int_arg(batch_size, "batch size")
    size = batch * _AIPP_BATCH_BYTES + _AIPP_HEAD_BYTES
    if batch <= 0 or size > _SIZE_T_MAX:
        raise AclError(f"AIPP batch size {batch} is invalid", ACL_ERROR_INVALID_PARAM)
    return size


class ModelApi:
    """The ``acl.mdl`` calls on the shared :class:`RuntimeState`; the synchronous forms wait
    through ``streams``."""

    def __init__(self, state: RuntimeState, streams: StreamApi) -> None:
        self.state = state
        self.streams = streams

    # -- loading ---------------------------------------------------------------------------
    def _load(self, spec: ModelSpec) -> int:
        session = self.state.require()
        device_id = self.state.current_context().device_id
        if not spec.blob or self.state.host is None:
            reply = session.request(device_id, "load", spec=spec.to_dict())
        else:  # bulk bytes travel through shared memory, never through the sockets
            size = len(spec.blob)
            ptr = self.state.host.malloc(size)
            try:
                ctypes.memmove(ptr, spec.blob, size)
                name, offset = self.state.host.locate(ptr, size)
                document = spec.to_dict()
                del document["blob"]
                document["blob_ref"] = [name, offset, size]
                reply = session.request(device_id, "load", spec=document)
            finally:
                self.state.host.free(ptr)
        with self.state.lock:
            model_id = next(self.state.model_ids)
            self.state.models[model_id] = LoadedModel.of(
                model_id, device_id, session.epochs[device_id], reply["handle"], spec
            )
        return model_id

    # CANN's load path reads and parses the model (LoadDataFromFile, then LoadRootModel) before
    # it asks for the current device: a missing file is 145002 and a bad one 145006 even on a
    # thread with no context; only a good model meets the context check (107002).
    @api(1)
    def load_from_file(self, path: Any) -> int:
        if not isinstance(path, str) or not path:
            raise AclError("model path must be a non-empty str", ACL_ERROR_INVALID_PARAM)
        spec = load_model_file(path)
        self.state.current_context()
        return self._load(spec)

    @api(1)
    def load_from_mem(self, ptr: Any, size: Any) -> int:
        ptr, size = int_arg(ptr, "ptr"), int_arg(size, "size")
        if ptr == 0 or size <= 0 or is_device_ptr(ptr):
            raise AclError("load_from_mem needs a host buffer and a size", ACL_ERROR_INVALID_PARAM)
        spec = parse_model(ctypes.string_at(ptr, size), source=f"memory@{ptr:#x}")
        self.state.current_context()
        return self._load(spec)

    @api()
    def unload(self, model_id: Any) -> None:
        found = self.state.model(model_id)
        with self.state.lock:
            del self.state.models[found.model_id]
        session = self.state.require()
        if found.device_id not in session.lost and found.epoch == session.epochs[found.device_id]:
            session.request(found.device_id, "unload", handle=found.card_handle)

    # -- descriptions ----------------------------------------------------------------------
    @api()
    def get_desc(self, desc: Any, model_id: Any) -> int:
        found = self.state.model(model_id)
        return self.state.handles.fill_desc(desc, found.model_id, found.spec)

    # -- AIPP (npufarm models have none) ---------------------------------------------------
    def _aipp_input(self, model_id: Any, index: Any) -> LoadedModel:
        """The model, once ``index`` names one of its inputs. GE checks the model id first
        (145003), then the index against the model's inputs: its PARAM_INVALID, which
        ACL_GET_ERRCODE_GE turns into ACL_ERROR_GE_FAILURE (500002)."""
        found = self.state.model(model_id)
        position = int_arg(index, "index")
        if not 0 <= position < len(found.spec.inputs):
            raise AclError(
                f"model {found.model_id} has no input {position} ({len(found.spec.inputs)} inputs)",
                ACL_ERROR_GE_FAILURE,
            )
        return found

    def get_aipp_type(self, model_id: Any, index: Any) -> tuple[int, int, int]:
        """``(type, dynamic_attached_data_index, ret)`` of an input: ACL_DATA_WITHOUT_AIPP (0)
        and ACL_INVALID_NODE_INDEX (0xFFFFFFFF), npufarm models have no AIPP; unknown model →
        145003, no such input → 500002.

        The two values are the same on failure: CANN writes the index before it asks GE, and
        pyACL's type starts as ACL_DATA_WITHOUT_AIPP (hence no :func:`api` wrapper here)."""
        try:
            self._aipp_input(model_id, index)
        except NpuFarmError as exc:
            self.state.note_error("get_aipp_type", exc)
            return ACL_DATA_WITHOUT_AIPP, ACL_INVALID_NODE_INDEX, exc.code
        return ACL_DATA_WITHOUT_AIPP, ACL_INVALID_NODE_INDEX, ACL_SUCCESS

    @api(1, default={})
    def get_first_aipp_info(self, model_id: Any, index: Any) -> dict[str, Any]:
        """``(aipp_info, ret)``: npufarm models have no AIPP, so 145015 (AIPP not configured)
        for every index; unknown model → 145003."""
        found = self.state.model(model_id)
        raise AclError(
            f"input {index} of model {found.model_id} is not configured with AIPP",
            ACL_ERROR_GE_AIPP_NOT_EXIST,
        )

    @api(1)
    def get_aipp_data_size(self, batch_size: Any) -> int:
        """``(size, ret)``: bytes of a dynamic-AIPP input for ``batch_size`` images
        (64 + 96 per image, GE's layout); 0 → 100000."""
        return aipp_data_size(batch_size)

    # -- execution -------------------------------------------------------------------------
    def _refs(
        self, dataset: Any, nbytes: tuple[int, ...], what: str, device_id: int
    ) -> list[list[int]]:
        """``[[ptr, tensor bytes], ...]`` of a dataset, each checked against this process's
        live device allocations; cached until a buffer, dataset or allocation changes."""
        key = (dataset, nbytes, device_id)
        generations = (self.state.handles.generation, self.state.allocations.generation)
        cached = self.state.refs_cache.get(key)
        if cached is not None and cached[0] == generations:
            return cached[1]
        refs = self._check_refs(dataset, nbytes, what, device_id)
        if len(self.state.refs_cache) > _MAX_CACHED:
            self.state.refs_cache.clear()
        self.state.refs_cache[key] = (generations, refs)
        return refs

    def _check_refs(
        self, dataset: Any, nbytes: tuple[int, ...], what: str, device_id: int
    ) -> list[list[int]]:
        buffers = self.state.handles.dataset_buffers(dataset)
        if buffers is None:
            raise AclError(f"{what} dataset {dataset} is unknown", ACL_ERROR_INVALID_PARAM)
        if len(buffers) < len(nbytes):
            raise AclError(
                f"{what} dataset has {len(buffers)} buffers, the model needs {len(nbytes)}",
                ACL_ERROR_INVALID_PARAM,
            )
        refs = []
        for index, (handle, need) in enumerate(zip(buffers, nbytes)):
            buffer = self.state.handles.buffer(handle)
            if buffer is None:
                raise AclError(f"{what} buffer {index} was destroyed", ACL_ERROR_INVALID_PARAM)
            ptr, size = buffer
            if size < need:
                raise AclError(
                    f"{what} {index} is {size} bytes, the model needs {need}",
                    ACL_ERROR_INVALID_PARAM,
                )
            if not is_device_ptr(ptr) or decode_ptr(ptr)[0] != device_id:
                raise AclError(
                    f"{what} {index} is not memory of device {device_id}",
                    ACL_ERROR_RT_PARAM_INVALID,
                )
            self.state.check_device_range(ptr, need)
            refs.append([ptr, need])
        return refs

    def _binding(self, found: LoadedModel, inputs: Any, outputs: Any) -> tuple:
        """``(reads, writes, plan, poison)`` of ``found`` executed on these datasets: checked
        (:meth:`_refs`, :meth:`RuntimeState.task_plan`) on first use, then reused while the
        data buffers, datasets and allocations are unchanged (their generations) and the model
        is still loaded (the same :class:`LoadedModel` record). Kept in the session's
        ``refs_cache``, which a new session replaces; a pipeline resubmits the same binding."""
        state = self.state
        handles, allocations = state.handles.generation, state.allocations.generation
        key = (_BINDING, found.model_id, inputs, outputs)
        cached = state.refs_cache.get(key)
        if (
            cached is not None
            and cached[0] == handles
            and cached[1] == allocations
            and cached[2] is found
        ):
            return cached[3]
        reads = self._refs(inputs, found.input_nbytes, "input", found.device_id)
        writes = self._refs(outputs, found.output_nbytes, "output", found.device_id)
        plan = state.task_plan(writes, reads, found.spec.outputs if state.poison_outputs else ())
        # as the task leaves for the card (held ones wait): fill its outputs (skip_sync poison)
        poison = functools.partial(state.poison_unread, plan) if state.poison_outputs else None
        binding = (reads, writes, plan, poison)
        if len(state.refs_cache) > _MAX_CACHED:
            state.refs_cache.clear()
        state.refs_cache[key] = (handles, allocations, found, binding)
        return binding

    def _submit_execute(
        self, found: LoadedModel, inputs: Any, outputs: Any, track: StreamTrack, call: str
    ) -> int:
        """Submit an execute of ``found`` (looked up by the caller) on ``track``."""
        submitted_s = time.monotonic()  # the card's model runs the kernel from here on
        if found.device_id != track.device_id:
            raise AclError(
                f"model {found.model_id} is on device {found.device_id}, the stream "
                f"on {track.device_id}",
                ACL_ERROR_RT_STREAM_CONTEXT,
            )
        session = self.state.require()
        if session.broker_lost or found.device_id in session.lost:
            session.check_device(found.device_id)
        if found.epoch != session.epochs[found.device_id]:
            raise AclError(
                "the model was loaded before the device was reset",
                ACL_ERROR_GE_EXEC_MODEL_ID_INVALID,
            )
        reads, writes, plan, poison = self._binding(found, inputs, outputs)
        task = {
            "k": TaskKind.EXECUTE,
            "m": found.card_handle,
            "i": reads,
            "o": writes,
            TASK_STAMP: submitted_s,
        }
        return self.state.submit_task(track, task, reads, writes, call, plan, poison)

    def _exec_config(self, handle: Any) -> ExecConfig:
        if int_arg(handle, "exec config handle") == 0:
            raise AclError("exec config handle is NULL", ACL_ERROR_INVALID_PARAM)
        config = self.state.handles.exec_config_snapshot(handle)
        if config is None:
            raise AclError(f"unknown exec config handle {handle}", ACL_ERROR_INVALID_PARAM)
        return config

    def _sync_track(self) -> StreamTrack:
        """The current context's private queue for synchronous executes.

        Its stream id is a real, non-negative id, as the implicit stream of CANN's aclmdlExecute
        has (exception infos report it): the context handle plus half a handle step, which no
        handle of the session can equal (handles are multiples of 16) and which is unique per
        context."""
        context = self.state.current_context()
        with self.state.lock:
            track = self.state.sync_tracks.get(context.handle)
            if track is None:
                track = self.state.sync_tracks[context.handle] = StreamTrack(
                    context.device_id, context.handle + _SYNC_QUEUE_OFFSET
                )
        return track

    @api()
    def execute(self, model_id: Any, inputs: Any, outputs: Any) -> int:
        found = self.state.model(model_id)  # CANN looks the model up before it needs a context
        track = self._sync_track()
        with self.streams.one_sync_execute(track):  # its error is its own (StreamApi)
            task_id = self._submit_execute(found, inputs, outputs, track, "acl.mdl.execute")
            return self.streams.wait_track(
                track, task_id, -1, ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, "execute"
            )

    @api()
    def execute_async(self, model_id: Any, inputs: Any, outputs: Any, stream: Any) -> None:
        found = self.state.model(model_id)  # CANN looks it up before the stream and its context
        target = self.state.stream(stream)
        self._submit_execute(found, inputs, outputs, target.track, "acl.mdl.execute_async")

    @api()
    def execute_v2(self, model_id: Any, inputs: Any, outputs: Any, stream: Any, handle: Any) -> int:
        config = self._exec_config(handle)
        found = self.state.model(model_id)  # before the context, as in CANN
        if int_arg(stream, "stream") == 0 and getattr(self.state.tls, "context", None) is None:
            self.state.current_context()
        target = self.state.stream(stream)
        timeout_ms = config.stream_sync_timeout_ms
        if timeout_ms != -1 and sync_timeout_error(timeout_ms) != ACL_SUCCESS:
            raise AclError(
                "exec-config stream sync timeout 0 is invalid for a sync",
                ACL_ERROR_RT_PARAM_INVALID,
            )
        task_id = self._submit_execute(found, inputs, outputs, target.track, "acl.mdl.execute_v2")
        return self.streams.wait_track(
            target.track, task_id, timeout_ms, ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, "execute_v2"
        )

    @api()
    def execute_async_v2(
        self, model_id: Any, inputs: Any, outputs: Any, stream: Any, handle: Any
    ) -> None:
        config = self._exec_config(handle)
        found = self.state.model(model_id)  # before the stream and its context, as in CANN
        target = self.state.stream(stream)
        with self.streams.exec_config_applies(target, config):  # atomically (StreamApi)
            self._submit_execute(found, inputs, outputs, target.track, "acl.mdl.execute_async_v2")
