"""Why a request failed (``ErrorKind``) and why a worker stopped (``WorkerExit``)."""

from __future__ import annotations

import enum


class ErrorKind(str, enum.Enum):
    """What went wrong, in the server's own words: the one list of failures a client can be told of.

    The worker sends kinds in ``RequestFailed`` and ``LoadFailed``; the orchestrator and
    the API layer raise any of them as ``ServerError``. Nothing but the API
    layer knows HTTP: it alone turns a kind into a status and a surface's
    error type (api/_errors.py), so the worker and the orchestrator stay the
    same whichever protocol a client speaks.
    """

    # The request cannot be served as sent (a prompt over the context, a template that rejects it, a grammar ...).
    INVALID_REQUEST = "invalid_request"
    # Generation failed, through no fault of the request.
    INTERNAL = "internal"
    # Generation, or loading the model, needs more memory than there is.
    OUT_OF_MEMORY = "out_of_memory"
    # No such model, or no such endpoint.
    NOT_FOUND = "not_found"
    # The model cannot serve now (stopped, crashed, unloading, the server stopping); trying again may work.
    UNAVAILABLE = "unavailable"
    # The model did not answer in time.
    TIMEOUT = "timeout"
    # Too many requests are waiting for the model.
    OVERLOADED = "overloaded"
    # What the HTTP side refuses before a request is read.
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    MISDIRECTED = "misdirected"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    BODY_TIMEOUT = "body_timeout"
    METHOD_NOT_ALLOWED = "method_not_allowed"


class WorkerExit(enum.IntEnum):
    """A worker's exit status, and so why it stopped (the orchestrator words each for its log and its requests)."""

    OK = 0
    # The model could not be loaded (a LoadFailed was sent first where the channel still worked).
    LOAD_FAILED = 3
    # The channel to the orchestrator broke.
    CHANNEL_BROKEN = 4
    # Generation failed repeatedly with no good step between: a state no request can fix.
    GENERATION_BROKEN = 5
    # A message arrived that the worker could not read.
    PROTOCOL_ERROR = 6
    # A rank of a worker group failed or went away: the group ends as one.
    GROUP_BROKEN = 7
