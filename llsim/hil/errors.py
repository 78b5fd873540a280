"""Typed errors of the HIL runtime (coordinator side).

Every failure of a worker reaches the caller as one of these, within a bounded time:

* :class:`WorkerLost` - the worker is gone: :class:`WorkerDied` (its connection closed: killed,
  crashed, unplugged) or :class:`WorkerHung` (no heartbeat for ``patience`` intervals, or it stopped
  taking the bytes sent to it). Every call in flight on that worker fails with it.
* :class:`DeadlineExceeded` - one call took longer than its deadline (predicted time x slack, with a
  floor); the worker may still be alive.
* :class:`RemoteError` - the worker answered a typed error; ``code`` is the protocol's error code,
  ``remote_traceback`` the worker's traceback where there is one. Subclasses by code below.
* :class:`ProtocolError`, :class:`AuthError`, :class:`VersionError` - the connection could not be
  set up or was closed by the worker for a protocol violation.

They are :class:`llsim.errors.LLSimError` s, so the CLI prints them as one line (exit code 2).
"""
from __future__ import annotations

from llsim.errors import LLSimError


class WorkerError(LLSimError):
    def __init__(self, message: str, worker: str | None = None):
        super().__init__(f"worker {worker}: {message}" if worker else message)
        self.worker = worker
        self.detail = message


class ProtocolError(WorkerError):
    pass


class AuthError(ProtocolError):
    pass


class VersionError(ProtocolError):
    pass


class WorkerLost(WorkerError):
    pass


class WorkerDied(WorkerLost):
    def __init__(self, message: str, worker: str | None = None, log_tail: str | None = None):
        if log_tail:
            message = f"{message}; last lines of its log:\n{log_tail}"
        super().__init__(message, worker)
        self.log_tail = log_tail


class WorkerHung(WorkerLost):
    pass


class DeadlineExceeded(WorkerError):
    pass


class RemoteError(WorkerError):
    code = "remote"

    def __init__(self, code: str, message: str, worker: str | None = None, remote_traceback: str | None = None):
        super().__init__(f"{code}: {message}", worker)
        self.code = code
        self.remote_message = message
        self.remote_traceback = remote_traceback


class UnknownSegment(RemoteError):
    pass


class BadInput(RemoteError):
    pass


class SegmentLoadError(RemoteError):
    pass


class Dropped(RemoteError):
    pass


class InputsTimeout(RemoteError):
    pass


class RunFailed(RemoteError):
    pass


class Busy(RemoteError):
    pass


_BY_CODE = {
    "unknown_segment": UnknownSegment,
    "bad_input": BadInput, "unknown_input": BadInput, "missing_input": BadInput, "no_state": BadInput,
    "unexpected_input": BadInput, "unknown_output": BadInput, "bad_request": BadInput, "duplicate": BadInput,
    "not_found": SegmentLoadError, "sha256_mismatch": SegmentLoadError, "bad_model": SegmentLoadError,
    "bad_state": SegmentLoadError,
    "dropped": Dropped, "inputs_timeout": InputsTimeout, "run_failed": RunFailed, "busy": Busy,
}
_FATAL = {"auth": AuthError, "version": VersionError}


def remote_error(header: dict, worker: str | None) -> WorkerError:
    """The typed exception for an ``error`` frame."""
    code = str(header.get("code", "remote"))
    msg = str(header.get("message", ""))
    if code in _FATAL:
        return _FATAL[code](msg, worker)
    if header.get("fatal"):
        return ProtocolError(f"{code}: {msg}", worker)
    return _BY_CODE.get(code, RemoteError)(code, msg, worker, header.get("traceback"))
