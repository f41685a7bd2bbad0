"""Which image URLs a public server may fetch: http(s) to a host whose every address is public, no credentials.

The fetcher (api/_fetch.py) checks each URL here, the first and every redirect's, and resolves the
host itself so that the address it connects to is the one this policy saw.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

import attrs

from .._errors import ServerError
from .._protocol import ErrorKind

__all__ = ["Address", "Target", "is_public_address", "parse_target"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services by name (their addresses are link-local or CGNAT, refused anyway): a resolver
# inside the cloud may answer these with anything.
METADATA_NAMES = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"}
)
# Python's is_global misses these (or knows them only in later versions).
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(network)
    for network in ["0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "fc00::/7", "fec0::/10", "2001::/23"]
)
# Only global unicast (RFC 4291) is routable IPv6 here; NAT64, IPv4-compatible and the rest are reserved.
_IPV6_UNICAST = ipaddress.ip_network("2000::/3")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_public_address(address: Address) -> bool:
    """Whether ``address`` is on the public internet: not loopback, private, link-local, CGNAT, multicast or reserved.

    An IPv6 address that carries an IPv4 one (mapped, 6to4) is judged by that too.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public_address(address.ipv4_mapped)
        if address not in _IPV6_UNICAST:
            return False
        if address.sixtofour is not None and not is_public_address(address.sixtofour):
            return False
    return not (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or any(address in network for network in _NOT_PUBLIC if network.version == address.version)
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


@attrs.frozen
class Target:
    """A checked URL: what to resolve and connect to, and what to send."""

    url: str
    scheme: str
    # ASCII (IDNA) host name or address literal: resolved, given as SNI and checked against the certificate.
    host: str
    port: int
    # The Host header and the request target (path and query; never the fragment).
    authority: str
    path: str


def parse_target(url: str, *, where: str, base: str | None = None) -> Target:
    """``url`` checked before anything is resolved: http(s), a host, a port, no credentials, no metadata name.

    ``base``: the URL that redirected to ``url`` (a Location relative to it).
    """
    hint = "a redirect: " if base else ""

    def refuse(why: str) -> ServerError:
        return ServerError(ErrorKind.INVALID_REQUEST, f"{where}: {hint}{why}", param=where)

    try:
        url = urllib.parse.urljoin(base, url) if base else url
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("the image URL is not a valid URL (or its port is not 0-65535)") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise refuse(f"only http or https image URLs can be fetched, not {scheme or 'a URL without a scheme'!r}")
    if "@" in parts.netloc:
        raise refuse("an image URL with credentials (user@ or user:password@) is not fetched")
    host = parts.hostname or ""
    if not host:
        raise refuse("the image URL has no host")
    if len(host) > 253:
        raise refuse("the image URL's host name is longer than 253 characters")
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None:
        try:
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise refuse("the image URL's host name is not a valid host name") from None
        if not _HOST_NAME.fullmatch(host):
            raise refuse("the image URL's host name is not a valid host name")
        if host.rstrip(".") in METADATA_NAMES:
            raise refuse(f"{host!r} names a cloud metadata service, which is never fetched")
    elif isinstance(literal, ipaddress.IPv6Address) and literal.scope_id:
        raise refuse("an IPv6 address with a zone (%...) is not public")
    port = _DEFAULT_PORTS[scheme] if port is None else port
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    # Spaces and non-ASCII characters that a client left unescaped are escaped, as a browser would.
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=~?")
    return Target(url=url, scheme=scheme, host=host, port=port, authority=authority, path=path)
