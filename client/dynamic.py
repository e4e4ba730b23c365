"""Dynamic-shape calls of ``acl.mdl`` (dynamic batch, dynamic height/width, dynamic dims).

npufarm's synthetic models are static: they have no gears. The queries therefore report zero
gears with ret 0, exactly what CANN returns for a static model (``batchCount`` / ``hwCount`` /
gear count 0), and the setters fail the way CANN's model layer (GE) fails for a model without
gears. The order of the checks follows CANN (acl layer first, then GE):

1. ``dataset`` NULL or unknown, ``batch_size`` / ``height`` / ``width`` 0, ``dimCount`` 0, no
   data buffer at ``index``, or a buffer with address 0 → 100000 (ACL_ERROR_INVALID_PARAM);
2. unknown model id → 145003 (ACL_ERROR_GE_EXEC_MODEL_ID_INVALID);
3. ``set_dynamic_batch_size`` with a buffer under 4 bytes, ``set_dynamic_hw_size`` under 8
   bytes → 145012 (ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID);
4. the model has no such gear (always, for a static model): ``set_dynamic_batch_size`` and
   ``set_dynamic_hw_size`` → 145013 (ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID, GE's "does not
   match the gear of the model"); ``set_input_dynamic_dims`` → 145012 (GE compares the dims
   given with the model's dynamic dims, of which a static model has none).

Return shapes are pyACL's: ``({"batchCount": n, "batch": [...]}, ret)``,
``({"hwCount": n, "hw": [[h, w], ...]}, ret)`` (an empty dict with a failing ret),
``(count, ret)``, and a list of ``{"name", "dimCount", "dims"}`` dicts for
``get_input_dynamic_dims`` (``gear_count`` zeroed entries, as pyACL builds them).
A part of the process-wide runtime (see :mod:`client.runtime`).
"""

from __future__ import annotations

import logging
from typing import Any

from client.conventions import api, int_arg
from client.handle_table import as_int
from client.state import RuntimeState
from core.errors import (
    ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID,
    ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID,
    ACL_ERROR_INVALID_PARAM,
    ACL_SUCCESS,
    AclError,
)

__all__ = ["DynamicShapeApi"]

logger = logging.getLogger(__name__)

_UNUSED_INDEX = (-1, 2**64 - 1)  # "must be -1" (pyACL passes it as an unsigned long)
_MAX_GEAR_COUNT = 4096  # pyACL's limit on get_input_dynamic_dims' gear_count


class DynamicShapeApi:
    """Dynamic-shape calls on the shared :class:`RuntimeState`."""

    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    def _desc_error(self, call: str, desc: Any) -> int:
        """ACL_ERROR_INVALID_PARAM (noted for get_recent_err_msg) if ``desc`` is not a live
        model description, else 0."""
        if self.state.handles.has_desc(desc):
            return ACL_SUCCESS
        self.state.note_error(
            call, AclError(f"unknown model desc {desc!r}", ACL_ERROR_INVALID_PARAM)
        )
        return ACL_ERROR_INVALID_PARAM

    # -- queries ---------------------------------------------------------------------------
    def get_dynamic_batch(self, desc: Any) -> tuple[dict[str, Any], int]:
        """``({"batchCount": 0, "batch": []}, 0)``: npufarm models have no batch gears."""
        code = self._desc_error("get_dynamic_batch", desc)
        return ({}, code) if code else ({"batchCount": 0, "batch": []}, ACL_SUCCESS)

    def get_dynamic_hw(self, desc: Any, index: Any) -> tuple[dict[str, Any], int]:
        """``({"hwCount": 0, "hw": []}, 0)``: no height/width gears (``index`` is unused)."""
        code = self._desc_error("get_dynamic_hw", desc)
        return ({}, code) if code else ({"hwCount": 0, "hw": []}, ACL_SUCCESS)

    def get_input_dynamic_gear_count(self, desc: Any, index: Any) -> tuple[int, int]:
        """``(0, 0)``: no dynamic-dims gears; ``index`` must be -1 (else 100000)."""
        code = self._desc_error("get_input_dynamic_gear_count", desc)
        if not code and as_int(index) not in _UNUSED_INDEX:
            self.state.note_error(
                "get_input_dynamic_gear_count",
                AclError("index must be -1", ACL_ERROR_INVALID_PARAM),
            )
            code = ACL_ERROR_INVALID_PARAM
        return 0, code

    def get_input_dynamic_dims(
        self, desc: Any, index: Any, gear_count: Any
    ) -> tuple[list[dict[str, Any]] | None, int]:
        """``gear_count`` empty dims dicts and 0 (no gears); ``index`` must be -1."""
        count = as_int(gear_count)
        if count is None or not 0 <= count <= _MAX_GEAR_COUNT:
            return None, ACL_ERROR_INVALID_PARAM
        code = self._desc_error("get_input_dynamic_dims", desc)
        if not code and as_int(index) not in _UNUSED_INDEX:
            self.state.note_error(
                "get_input_dynamic_dims", AclError("index must be -1", ACL_ERROR_INVALID_PARAM)
            )
            code = ACL_ERROR_INVALID_PARAM
        if code:
            return [], code
        return [{"name": "", "dimCount": 0, "dims": []} for _ in range(count)], ACL_SUCCESS

    # -- setters ---------------------------------------------------------------------------
    def _dynamic_input(self, dataset: Any, index: Any) -> int:
        """The size of the dataset's buffer at ``index`` (the dynamic input), checked as the
        acl layer does: unknown dataset, index or NULL address → 100000."""
        buffers = self.state.handles.dataset_buffers(dataset)
        i = int_arg(index, "index")
        if buffers is None or not 0 <= i < len(buffers):
            raise AclError(
                f"no data buffer {index!r} in dataset {dataset!r}", ACL_ERROR_INVALID_PARAM
            )
        entry = self.state.handles.buffer(buffers[i])
        if entry is None or entry[0] == 0:
            raise AclError(
                "the dynamic input's data buffer has no address", ACL_ERROR_INVALID_PARAM
            )
        return entry[1]

    @api()
    def set_dynamic_batch_size(self, model_id: Any, dataset: Any, index: Any, batch: Any) -> None:
        """Select a batch gear: 145013 (no such gear) on npufarm's static models."""
        if int_arg(batch, "batch size") <= 0:
            raise AclError("batch size must be positive", ACL_ERROR_INVALID_PARAM)
        nbytes = self._dynamic_input(dataset, index)
        model = self.state.model(model_id)
        if nbytes < 4:
            raise AclError("dynamic input under 4 bytes", ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID)
        raise AclError(
            f"model {model.model_id} ({model.spec.name}) has no batch gear {batch}",
            ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID,
        )

    @api()
    def set_dynamic_hw_size(
        self, model_id: Any, dataset: Any, index: Any, height: Any, width: Any
    ) -> None:
        """Select a height/width gear: 145013 (no such gear) on npufarm's static models."""
        if int_arg(height, "height") <= 0 or int_arg(width, "width") <= 0:
            raise AclError("height and width must be positive", ACL_ERROR_INVALID_PARAM)
        nbytes = self._dynamic_input(dataset, index)
        model = self.state.model(model_id)
        if nbytes < 8:
            raise AclError("dynamic input under 8 bytes", ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID)
        raise AclError(
            f"model {model.model_id} ({model.spec.name}) has no gear {height}x{width}",
            ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID,
        )

    @api()
    def set_input_dynamic_dims(self, model_id: Any, dataset: Any, index: Any, dims: Any) -> None:
        """Select a dynamic-dims gear (``dims`` as get_input_dims returns it): 145012 on
        npufarm's static models (they have no dynamic dims to match)."""
        if not isinstance(dims, dict) or not isinstance(dims.get("dims"), list):
            raise AclError("dims must be a dict with a 'dims' list", ACL_ERROR_INVALID_PARAM)
        count = int_arg(dims.get("dimCount", len(dims["dims"])), "dimCount")
        if count <= 0 or count > len(dims["dims"]):
            raise AclError(f"dimCount {count} invalid", ACL_ERROR_INVALID_PARAM)
        self._dynamic_input(dataset, index)
        model = self.state.model(model_id)
        raise AclError(
            f"model {model.model_id} ({model.spec.name}) has no dynamic dims",
            ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID,
        )
