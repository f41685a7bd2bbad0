"""JSON bodies to typed structures (msgspec), every problem a 400 that names the field where it can.

Whatever a body holds, decoding it either gives the structure or raises a
``ServerError``: bad JSON, wrong types, nesting too deep, and invalid UTF-8
inside a string, which msgspec reports as a bare ``UnicodeDecodeError``
without the field. All of it costs time linear in the body, at
the speed of msgspec or of ``bytes`` methods: no Python loop over the body.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec

from .._errors import ErrorKind, ServerError

if TYPE_CHECKING:
    from ._common import RequestLimits

__all__ = ["decode_body", "decode_request"]

T = TypeVar("T")


class _Request(Protocol):
    """A surface's request body: its own checks, against the server's limits, after decoding."""

    def validate(self, limits: RequestLimits) -> None: ...


R = TypeVar("R", bound=_Request)

_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"missing required field `([^`]*)`")


def _param_of(message: str) -> str | None:
    """The offending field, as OpenAI names it ("messages[0].role"), from msgspec's message."""
    at = _PATH_RE.search(message)
    path = at.group(1) if at else ""
    missing = _MISSING_RE.search(message)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
    return path or None


def _invalid_utf8(body: bytes, body_type: type) -> ServerError:
    """A 400 for invalid UTF-8 in a string of ``body``, naming the field whose string holds the first bad byte.

    msgspec does not say where: the string is swapped for ``{}``, which no
    field holding a string takes, and msgspec's complaint about that names
    the field. A key, or a field that takes any JSON, is not named.
    """
    try:
        body.decode()
    except UnicodeDecodeError as exc:
        at = exc.start
    else:
        at = -1
    param = None
    if at >= 0:
        # Outside strings JSON has neither quotes nor backslashes, and inside them a backslash
        # escapes the next byte: with escaped backslashes and quotes blanked (same length, so
        # same offsets), the quotes left are where strings open and close.
        plain = body.replace(b"\\\\", b"  ").replace(b'\\"', b"  ")
        opening, closing = plain.rfind(b'"', 0, at), plain.find(b'"', at)
        if 0 <= opening < closing:
            try:
                msgspec.json.decode(body[:opening] + b"{}" + body[closing + 1 :], type=body_type)
            except msgspec.ValidationError as exc:
                param = _param_of(str(exc))
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                pass
    where = f" (at byte {at}{f', in {param}' if param else ''})" if at >= 0 else ""
    return ServerError(ErrorKind.INVALID_REQUEST, f"the body is not valid UTF-8{where}", param=param)


def decode_body(body: bytes, body_type: type[T]) -> T:
    """``body`` as a ``body_type``; any problem is a 400 ServerError."""
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        raise ServerError(ErrorKind.INVALID_REQUEST, f"invalid request: {exc}", param=_param_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ServerError(ErrorKind.INVALID_REQUEST, f"the body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise _invalid_utf8(body, body_type) from None
    except RecursionError:
        raise ServerError(ErrorKind.INVALID_REQUEST, "the body's JSON is nested too deeply") from None


def decode_request(body: bytes, request_type: type[R], limits: RequestLimits) -> R:
    """``body`` as a ``request_type``, checked by its own ``validate``; any problem is a 400 ServerError."""
    request = decode_body(body, request_type)
    request.validate(limits)
    return request
