"""ONNX models on a card: an onnxruntime session computing on the card's shared-memory views.

The card builds one :class:`onnxruntime.InferenceSession` per loaded model (``acl.mdl.load_*``)
from the ONNX bytes of the npufarm ``.om`` container (:mod:`device.om`), on the CPU execution
provider with one inter-op thread and the card profile's ``intra_op_threads`` (default 1: a
card is one compute unit, and N cards on a small host must not oversubscribe it). Inputs are fed
as typed views of device memory (no copy); outputs are copied into the output views (or the
card's deferred-publish buffers).

Pool threads never spin (``session.intra_op.allow_spinning`` / ``session.inter_op.allow_spinning``
= 0): onnxruntime's default keeps idle pool threads busy-waiting for the next parallel section,
which costs nothing on a real card's dedicated cores but here burns host cores that the other
cards, the broker and the clients need (N cards share the host). With the default of one
intra-op thread there is no pool and the setting changes nothing; with ``intra_op_threads`` > 1
it does.

onnxruntime is the ``onnx`` extra (``pip install 'npufarm[onnx]'``); without it loading an ONNX
model fails with ACL_ERROR_FEATURE_UNSUPPORTED and says what to install. It is imported when the
first session is built (:func:`make_session`), so importing this module (device/kernels.py and
device/atc.py do, at their top) costs nothing where no ONNX model runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from core.errors import ACL_ERROR_FEATURE_UNSUPPORTED, AclError
from device.model_spec import ModelFormatError, ModelSpec

__all__ = ["make_session", "make_onnx_compute", "set_card_threads"]

logger = logging.getLogger(__name__)

# intra-op threads of the sessions this process builds for cards: one process is one card, and
# the card sets its profile's ``intra_op_threads`` here at start (device/card.py run_card)
_card_threads = [1]
_NO_SPINNING = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def set_card_threads(threads: int) -> None:
    """The intra-op thread count of every ONNX model this (card) process loads from now on."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _card_threads[0] = threads


def make_session(model: bytes, threads: int = 1):
    """An onnxruntime CPU session for ``model`` with ``threads`` intra-op threads."""
    try:
        import onnxruntime  # optional heavy dependency (the onnx extra): imported lazily
    except ImportError as exc:
        raise AclError(
            "ONNX models need onnxruntime: pip install 'npufarm[onnx]'",
            ACL_ERROR_FEATURE_UNSUPPORTED,
        ) from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for key in _NO_SPINNING:  # see the module docstring: cards share the host's cores
        options.add_session_config_entry(key, "0")
    options.log_severity_level = 3  # errors only: the card's log is not onnxruntime's
    try:
        return onnxruntime.InferenceSession(
            model, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own exception types: a bad graph, not a bad card
        raise ModelFormatError(f"onnxruntime cannot load the model: {exc}") from exc


def make_onnx_compute(spec: ModelSpec) -> Callable[[list[np.ndarray], list[np.ndarray]], None]:
    """The kernel body (a :data:`device.kernels.Compute`) of an ``onnx`` model spec: typed
    inputs in, typed outputs written."""
    session = make_session(spec.blob, _card_threads[0])
    input_names = [t.name for t in spec.inputs]
    output_names = [t.name for t in spec.outputs]
    graph_inputs = {i.name for i in session.get_inputs()}
    missing = sorted(set(input_names) - graph_inputs)
    if missing:
        raise ModelFormatError(f"model {spec.name}: inputs {missing} are not in its graph")

    def compute(xs: list[np.ndarray], ys: list[np.ndarray]) -> None:
        results = session.run(output_names, dict(zip(input_names, xs)))
        for y, result in zip(ys, results):
            np.copyto(y, np.asarray(result).reshape(y.shape), casting="no")

    return compute
