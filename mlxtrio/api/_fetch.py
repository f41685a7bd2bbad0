"""Images by http(s) URL, for an operator who turns fetching on (``image_fetch``): a fetch a public server can afford.

A client's URL must not reach what only the server can reach (SSRF): every URL, the first and each
redirect's, is checked by the policy (api/_fetch_policy.py), its host resolved here and every address
checked, and the connection made to a checked address, so a name that resolves differently a moment
later (DNS rebinding) gains nothing. One GET over HTTP/1.1 (h11) with no cookies or credentials, the
whole of it, redirects included, within a time and a byte limit.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from collections.abc import Callable

import attrs
import h11
import trio

from .._errors import ServerError
from .._protocol import ErrorKind
from ._fetch_policy import Address, Target, is_public_address, parse_target

__all__ = ["fetch_image", "is_public_address"]

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RECEIVE_BYTES = 65536


async def fetch_image(
    url: str,
    *,
    max_bytes: int,
    timeout: float,
    where: str,
    received: Callable[[int], None] | None = None,
    address_allowed: Callable[[Address], bool] = is_public_address,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """The body of ``url`` (http or https), at most ``max_bytes``, within ``timeout`` seconds in all.

    Raises ``ServerError``: INVALID_REQUEST naming ``where`` (as its param) for an address that is not
    public, a scheme, a status or a content type that is not an image's, a time-out; TOO_LARGE past ``max_bytes``.
    ``received`` is told the size of each piece of the body as it comes, and may raise ``ServerError`` to stop it.
    ``address_allowed`` and ``ssl_context`` are for tests only (a local server, a test CA).
    """
    fetch = _Fetch(where=where, max_bytes=max_bytes, allowed=address_allowed, tls=ssl_context or _default_tls(), received=received)
    with trio.move_on_after(timeout):
        target = parse_target(url, where=where)
        for hop in range(MAX_REDIRECTS + 1):
            location = await fetch.get(target, hint="a redirect: " if hop else "")
            if isinstance(location, bytes):
                return location
            if hop == MAX_REDIRECTS:
                raise fetch.refuse(f"the image URL took more than {MAX_REDIRECTS} redirects; not followed further")
            target = parse_target(location, where=where, base=target.url)
    raise fetch.refuse(f"fetching the image took longer than {timeout:g} s (MLX_IMAGE_FETCH_TIMEOUT)")


@functools.cache
def _default_tls() -> ssl.SSLContext:
    # Verifies the certificate and the host name against the system's trust store.
    return ssl.create_default_context()


@attrs.frozen(kw_only=True)
class _Fetch:
    """One fetch's limits and policy, for each of its requests."""

    where: str
    max_bytes: int
    allowed: Callable[[Address], bool]
    tls: ssl.SSLContext
    received: Callable[[int], None] | None = None

    def refuse(self, why: str, kind: ErrorKind = ErrorKind.INVALID_REQUEST) -> ServerError:
        return ServerError(kind, f"{self.where}: {why}", param=self.where)

    def too_large(self, size: str) -> ServerError:
        return self.refuse(
            f"the image is {size} bytes; at most {self.max_bytes} (MLX_IMAGE_MAX_BYTES)", ErrorKind.TOO_LARGE
        )

    async def get(self, target: Target, *, hint: str) -> bytes | str:
        """The body of an image answer, or a redirect's Location."""
        stream: trio.abc.Stream = await self.connect(target, hint=hint)
        try:
            if target.scheme == "https":
                stream = trio.SSLStream(stream, self.tls, server_hostname=target.host, https_compatible=True)
                try:
                    await stream.do_handshake()
                except trio.BrokenResourceError:
                    raise self.refuse(
                        f"could not fetch the image from {target.host}: TLS failed (a certificate not valid for it?)"
                    ) from None
            return await self.exchange(stream, target)
        except (trio.BrokenResourceError, OSError):
            raise self.refuse(f"could not fetch the image from {target.host}: the connection failed") from None
        except h11.ProtocolError:
            raise self.refuse(f"could not fetch the image from {target.host}: its answer is not HTTP/1.1") from None
        finally:
            await trio.aclose_forcefully(stream)

    async def connect(self, target: Target, *, hint: str) -> trio.SocketStream:
        """A connection to an address of ``target``'s host, every one of which the policy allows."""
        try:
            found = await trio.socket.getaddrinfo(target.host, target.port, type=trio.socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise self.refuse(f"could not fetch the image: {target.host} does not resolve") from None
        for *_, sockaddr in found:
            address = ipaddress.ip_address(sockaddr[0].partition("%")[0])
            if not self.allowed(address) or (isinstance(address, ipaddress.IPv6Address) and sockaddr[3]):
                # The address itself is not shown: a client may not learn how the server's resolver sees a name.
                raise self.refuse(
                    f"{hint}{target.host} resolves to an address that is not public "
                    "(loopback, private, link-local, shared or reserved): not fetched"
                )
        # One checked address after another: connecting by name would resolve it again.
        for family, kind, protocol, _, sockaddr in found:
            sock = trio.socket.socket(family, kind, protocol)
            try:
                await sock.connect(sockaddr)
            except BaseException as error:
                sock.close()
                if isinstance(error, OSError):
                    continue
                raise
            return trio.SocketStream(sock)
        raise self.refuse(f"could not fetch the image from {target.host}: could not connect")

    async def exchange(self, stream: trio.abc.Stream, target: Target) -> bytes | str:
        connection = h11.Connection(h11.CLIENT)
        headers = [
            ("Host", target.authority),
            ("Accept", "image/*"),
            ("Accept-Encoding", "identity"),
            ("User-Agent", "mlxtrio"),
            ("Connection", "close"),
        ]
        try:
            request = connection.send(h11.Request(method="GET", target=target.path, headers=headers))
        except h11.LocalProtocolError:
            raise self.refuse("the image URL is not a valid URL") from None
        await stream.send_all(request + connection.send(h11.EndOfMessage()))

        async def next_event():
            while (event := connection.next_event()) is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(_RECEIVE_BYTES))
            return event

        while isinstance(response := await next_event(), h11.InformationalResponse):
            pass
        if not isinstance(response, h11.Response):
            raise self.refuse(f"could not fetch the image from {target.host}: the connection closed")
        fields = {name.decode("ascii"): value for name, value in response.headers}
        if response.status_code in _REDIRECTS and "location" in fields:
            return fields["location"].decode("latin-1")
        if not 200 <= response.status_code < 300:
            raise self.refuse(f"fetching the image from {target.host} answered HTTP {response.status_code}")
        kind = fields.get("content-type", b"").decode("latin-1")
        if not kind.lower().startswith("image/"):
            shown = kind[:100] or "none"
            raise self.refuse(f"the URL's content type is {shown!r}, not an image's (image/...)")
        if int(fields.get("content-length", b"0")) > self.max_bytes:
            raise self.too_large(fields["content-length"].decode("ascii"))
        body = bytearray()
        while not isinstance(event := await next_event(), h11.EndOfMessage):
            if isinstance(event, h11.ConnectionClosed):
                raise self.refuse(f"could not fetch the image from {target.host}: the connection closed early")
            body += event.data
            if len(body) > self.max_bytes:
                raise self.too_large(f"more than {self.max_bytes}")
            if self.received is not None:
                self.received(len(event.data))
        return bytes(body)
