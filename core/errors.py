"""ACL error codes (CANN names and values) and npufarm's one exception family.

Every error that crosses an API boundary carries an ACL code; :class:`NpuFarmError` adds the
structured fields (card, stream, task) so a log line or a finding can say where it happened.
"""

from __future__ import annotations

__all__ = [
    "ACL_SUCCESS",
    "ACL_ERROR_INVALID_PARAM",
    "ACL_ERROR_UNINITIALIZE",
    "ACL_ERROR_REPEAT_INITIALIZE",
    "ACL_ERROR_INVALID_FILE",
    "ACL_ERROR_PARSE_FILE",
    "ACL_ERROR_FEATURE_UNSUPPORTED",
    "ACL_ERROR_REPEAT_SUBSCRIBE",
    "ACL_ERROR_REPEAT_FINALIZE",
    "ACL_ERROR_RT_PARAM_INVALID",
    "ACL_ERROR_RT_INVALID_DEVICEID",
    "ACL_ERROR_RT_CONTEXT_NULL",
    "ACL_ERROR_RT_STREAM_CONTEXT",
    "ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID",
    "ACL_ERROR_RT_THREAD_SUBSCRIBE",
    "ACL_ERROR_RT_STREAM_NO_CB_REG",
    "ACL_ERROR_RT_TASK_TIMEOUT",
    "ACL_ERROR_RT_STREAM_ABORT",
    "ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID",
    "ACL_ERROR_GE_EXEC_MODEL_ID_INVALID",
    "ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID",
    "ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID",
    "ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID",
    "ACL_ERROR_RT_MEMORY_ALLOCATION",
    "ACL_ERROR_RT_NO_DEVICE",
    "ACL_ERROR_RT_NO_EVENT_RESOURCE",
    "ACL_ERROR_RT_NO_STREAM_RESOURCE",
    "ACL_ERROR_GE_FAILURE",
    "ACL_ERROR_RT_INTERNAL_ERROR",
    "ACL_ERROR_RT_LOST_HEARTBEAT",
    "ACL_ERROR_RT_MODEL_EXECUTE",
    "ACL_ERROR_RT_REPORT_TIMEOUT",
    "ACL_ERROR_RT_AICORE_TIMEOUT",
    "ACL_ERROR_RT_AICORE_EXCEPTION",
    "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
    "ACL_ERROR_RT_EVENT_SYNC_TIMEOUT",
    "ACL_ERROR_RT_DEVICE_MEM_ERROR",
    "ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR",
    "ACL_ERROR_RT_SOCKET_CLOSE",
    "CODE_NAMES",
    "code_name",
    "NpuFarmError",
    "AclError",
    "ConfigError",
    "ProtocolError",
    "FarmUnavailable",
]

ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_PARSE_FILE = 100006  # the aclInit configuration file is not JSON
ACL_ERROR_FEATURE_UNSUPPORTED = 200006
ACL_ERROR_REPEAT_SUBSCRIBE = 100033
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_STREAM_CONTEXT = 107003
ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID = 107006
ACL_ERROR_RT_THREAD_SUBSCRIBE = 107012
ACL_ERROR_RT_STREAM_NO_CB_REG = 107015
ACL_ERROR_RT_TASK_TIMEOUT = 107020
ACL_ERROR_RT_STREAM_ABORT = 107023
ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID = 145002
ACL_ERROR_GE_EXEC_MODEL_ID_INVALID = 145003
ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID = 145006
ACL_ERROR_GE_DYNAMIC_INPUT_LENGTH_INVALID = 145012
ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID = 145013
ACL_ERROR_RT_MEMORY_ALLOCATION = 207001
ACL_ERROR_RT_NO_DEVICE = 207004  # no device visible (e.g. a rejected ASCEND_RT_VISIBLE_DEVICES)
ACL_ERROR_RT_NO_EVENT_RESOURCE = 207007
ACL_ERROR_RT_NO_STREAM_RESOURCE = 207008
ACL_ERROR_GE_FAILURE = 500002
ACL_ERROR_RT_INTERNAL_ERROR = 507000
ACL_ERROR_RT_LOST_HEARTBEAT = 507010
ACL_ERROR_RT_MODEL_EXECUTE = 507011
ACL_ERROR_RT_REPORT_TIMEOUT = 507012
ACL_ERROR_RT_AICORE_TIMEOUT = 507014
ACL_ERROR_RT_AICORE_EXCEPTION = 507015
ACL_ERROR_RT_STREAM_SYNC_TIMEOUT = 507046
ACL_ERROR_RT_EVENT_SYNC_TIMEOUT = 507047
ACL_ERROR_RT_DEVICE_MEM_ERROR = 507053
ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR = 507054
ACL_ERROR_RT_SOCKET_CLOSE = 507901

CODE_NAMES: dict[int, str] = {
    value: name
    for name, value in dict(globals()).items()
    if name.startswith("ACL_") and isinstance(value, int)
}


def code_name(code: int) -> str:
    """The CANN name of an ACL code, or ``"UNKNOWN(<code>)"``."""
    return CODE_NAMES.get(code, f"UNKNOWN({code})")


class NpuFarmError(Exception):
    """Root of every npufarm exception; carries an ACL code and where it happened."""

    def __init__(
        self,
        message: str,
        code: int = ACL_ERROR_RT_INTERNAL_ERROR,
        *,
        card: int | None = None,
        stream: int | None = None,
        task: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.card = card
        self.stream = stream
        self.task = task

    def __str__(self) -> str:
        where = ", ".join(
            f"{key}={value}"
            for key, value in (("card", self.card), ("stream", self.stream), ("task", self.task))
            if value is not None
        )
        text = f"{super().__str__()} [{self.code} {code_name(self.code)}]"
        return f"{text} ({where})" if where else text


class AclError(NpuFarmError):
    """An ACL call failed with ``code``; the facade turns it into a return code."""


class ConfigError(NpuFarmError):
    """A configuration file or value is invalid; the message says which field and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ACL_ERROR_INVALID_PARAM)


class ProtocolError(NpuFarmError):
    """An inbound frame is malformed; the receiver logs it and drops the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ACL_ERROR_RT_INTERNAL_ERROR)


class FarmUnavailable(NpuFarmError):
    """No farm could be reached or started."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ACL_ERROR_RT_SOCKET_CLOSE)
