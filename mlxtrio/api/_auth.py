"""Bearer tokens: API keys on the API app (also as Anthropic's ``x-api-key``), a token on the admin API.

Each presented token is hashed and compared with every configured one's hash
by ``hmac.compare_digest``: equal lengths, no early exit, so the time taken
says nothing about how much of a key was right, or which key it was.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection

from quart import g, request
from quart_trio import QuartTrio

from .._errors import ErrorKind, ServerError

__all__ = ["api_key_owner", "require_bearer_token"]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def api_key_owner() -> str:
    """Whose request this is: the SHA-256 of the key it carried, as hex; "" where the server takes no keys.

    What the request keeps (stored responses) belongs to its owner, and only a request with the same key sees it.
    """
    return g.get("api_key_owner", "")


def require_bearer_token(
    app: QuartTrio,
    tokens: Collection[str],
    *,
    code: str,
    what: str = "API key",
    open_paths: Collection[str] = (),
    key_header: str | None = None,
) -> None:
    """Answer 401 (in the shape of the surface whose path it is), before the body is read, unless a request carries one of ``tokens``.

    ``what`` names the token in the 401's message: an API key, or the admin token.
    ``key_header``: a header that may carry the token instead (Anthropic's clients send ``x-api-key``);
    a request passes if any token it presents is right.

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
        presented = []
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and bearer.strip():
            presented.append(bearer.strip())
        if key_header is not None and request.headers.get(key_header, "").strip():
            presented.append(request.headers[key_header].strip())
        if not presented:
            where = f"'Authorization: Bearer <{what.split()[-1]}>'"
            if key_header is not None:
                where += f" or '{key_header}: <{what.split()[-1]}>'"
            raise ServerError(
                ErrorKind.UNAUTHENTICATED, f"no {what}: send it as {where}", code=code, www_authenticate=True, close_connection=True
            )
        for token in presented:
            wanted = _digest(token)
            matched = False
            for digest in digests:
                matched |= hmac.compare_digest(wanted, digest)
            if matched:
                g.api_key_owner = wanted.hex()
                return
        raise ServerError(
            ErrorKind.UNAUTHENTICATED, f"the {what} is not valid", code=code, www_authenticate=True, close_connection=True
        )
