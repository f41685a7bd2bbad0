"""Bearer tokens: API keys on the OpenAI API, a token on the admin API.

Each presented token is hashed and compared with every configured one's hash
by ``hmac.compare_digest``: equal lengths, no early exit, so the time taken
says nothing about how much of a key was right, or which key it was.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection

from quart import request
from quart_trio import QuartTrio

from .._errors import ErrorKind, ServerError

__all__ = ["require_bearer_token"]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def require_bearer_token(
    app: QuartTrio, tokens: Collection[str], *, code: str, what: str = "API key", open_paths: Collection[str] = ()
) -> None:
    """Answer 401 in OpenAI's shape, before the body is read, unless a request carries one of ``tokens``.

    ``what`` names the token in the 401's message: an API key, or the admin token.

    The body is never read for a refused request, so the 401 also closes the
    connection: what is left of the body must not be parsed as a next request.
    """
    if not tokens:
        return
    digests = tuple(_digest(token) for token in tokens)

    @app.before_request
    async def check() -> None:
        if request.path in open_paths:
            return
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ServerError(
                ErrorKind.UNAUTHENTICATED,
                f"no {what}: send it as 'Authorization: Bearer <{what.split()[-1]}>'",
                code=code,
                www_authenticate=True,
                close_connection=True,
            )
        wanted = _digest(presented.strip())
        matched = False
        for digest in digests:
            matched |= hmac.compare_digest(wanted, digest)
        if not matched:
            raise ServerError(
                ErrorKind.UNAUTHENTICATED, f"the {what} is not valid", code=code, www_authenticate=True, close_connection=True
            )
