"""Images by http(s) URL, for an operator who turns fetching on (``image_fetch``): a fetch a public server can afford.

Stub of the seam (issue 26): the fetcher's helper replaces this body.
"""

from __future__ import annotations

from .._errors import ServerError
from .._protocol import ErrorKind

__all__ = ["fetch_image"]


async def fetch_image(url: str, *, max_bytes: int, timeout: float, where: str) -> bytes:
    """The body of ``url`` (http or https), at most ``max_bytes``, within ``timeout`` seconds in all.

    Raises ``ServerError``: INVALID_REQUEST naming ``where`` (as its param) for an address that is not
    public, a scheme, a status or a content type that is not an image's, a time-out; TOO_LARGE past ``max_bytes``.
    """
    raise ServerError(ErrorKind.INVALID_REQUEST, f"{where}: fetching images by URL is not implemented", param=where)
