"""What a web page may make either API do: the Host, the Origin and the content type, checked before anything else.

A page open in a local browser can reach a server on loopback:

- **DNS rebinding**: the page's own name is made to resolve to 127.0.0.1,
  and the browser then lets the page read the server's answers as its own.
  Its requests carry the page's name as ``Host``, so a ``Host`` that is not
  a loopback name, the bound address or an operator's allowed host is
  refused (421: the request was not meant for this server, and no key or
  retry makes it so).
- **Simple requests**: a page may send a POST to any origin without asking
  first (no CORS preflight) when its content type is ``text/plain``, a form
  type or absent; it cannot read the answer, but the request runs. A
  state-changing request with a foreign ``Origin`` (``null`` included: a
  sandboxed or local-file page) is refused (403), and a body must say it is
  JSON (415 otherwise), which a page can only do after a preflight that a
  foreign origin never passes. An empty body needs no type (an SDK's or
  curl's ``POST /admin/unload``): a browser's empty POST still carries its
  ``Origin``.
- **Browser access an operator wants** is opt-in (``MLX_CORS_ORIGINS``):
  those origins' preflights are answered here, before the key check (a
  preflight never carries a key), and their responses get
  ``Access-Control-Allow-Origin``.

Every check reads headers only, once per request, before the bearer token
is checked and before the body is read: a refusal costs what the headers do,
and closes the connection, whose unread body must not be parsed as a next
request (as the 401 does, ``_auth.py``).
"""

from __future__ import annotations

import ipaddress
import re

import attrs
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers

from .._config import Config
from .._errors import ErrorKind, ServerError

__all__ = ["install_browser_checks"]

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ANY = "*"
# Requested headers echoed in a preflight's answer only when they are a plain list of header names.
_HEADER_NAMES = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:[ \t]*,[ \t]*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
_DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-Id"
_ALLOWED_METHODS = "GET, POST"
# What a page may read of a response beyond the CORS-safelisted headers.
_EXPOSED_HEADERS = "X-Request-Id, Retry-After, WWW-Authenticate"
# How long a browser may reuse a preflight's answer; browsers cap it (Chromium at 2 hours).
_PREFLIGHT_MAX_AGE = "600"
# A header value named in an error message is cut to this length.
_SHOWN = 200


def _shown(value: str) -> str:
    return repr(value if len(value) <= _SHOWN else value[:_SHOWN] + "...")


def _host_name(host: str) -> str | None:
    """The name or address a ``Host`` header names, lower case, without its port or an IPv6 address's brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
    else:
        name, _, port = host.partition(":")
    if not name or (port and not port.isdigit()):
        return None
    return name


def _address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _is_json(content_type: str) -> bool:
    """``application/json`` or ``application/<anything>+json``, with any parameters."""
    media_type = content_type.partition(";")[0].strip().lower()
    kind, slash, subtype = media_type.partition("/")
    return slash == "/" and kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _has_body(headers: Headers) -> bool:
    return "Transfer-Encoding" in headers or headers.get("Content-Length", "0").strip() != "0"


@attrs.frozen(kw_only=True)
class _Policy:
    """One app's checks: the names its ``Host`` may give, and the origins that may use it from a browser."""

    names: frozenset[str]
    any_host: bool
    # Bound to every interface: its addresses are not known, and an address cannot be rebound (a name can).
    any_address: bool
    bound: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    cors_origins: frozenset[str]
    any_origin: bool

    @classmethod
    def of(cls, config: Config, bound_host: str) -> _Policy:
        bound_name = bound_host.strip("[]").lower()
        bound = _address(bound_name)
        return cls(
            names=frozenset({"localhost", bound_name, *config.allowed_hosts}),
            any_host=_ANY in config.allowed_hosts,
            any_address=bound is not None and bound.is_unspecified,
            bound=bound,
            cors_origins=frozenset(config.cors_origins),
            any_origin=_ANY in config.cors_origins,
        )

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        name = _host_name(host)
        if name is None:
            return False
        if name in self.names or name.endswith(".localhost"):  # RFC 6761: *.localhost is loopback
            return True
        address = _address(name)
        return address is not None and (address.is_loopback or self.any_address or address == self.bound)

    def cors_allowed(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.cors_origins

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Same origin (the scheme aside, a TLS proxy's), or one the operator lets browsers use."""
        scheme, separator, authority = origin.lower().partition("://")
        same = separator and scheme in ("http", "https") and host is not None and authority == host.strip().lower()
        return bool(same) or self.cors_allowed(origin)

    def allow_origin(self, origin: str) -> str:
        return _ANY if self.any_origin else origin


def _foreign_origin(origin: str) -> ServerError:
    return ServerError(
        ErrorKind.FORBIDDEN,
        f"the Origin {_shown(origin)} may not use this API: a web page's requests are refused unless "
        "its origin is in MLX_CORS_ORIGINS",
        code="origin_not_allowed",
        close_connection=True,
    )


def _preflight(policy: _Policy, origin: str, headers: Headers) -> Response:
    """A browser asking whether ``origin`` may send its request: allowed origins only; never a 401."""
    if not policy.cors_allowed(origin):
        raise _foreign_origin(origin)
    requested = headers.get("Access-Control-Request-Headers", "").strip()
    response = Response(b"", status=204)
    response.headers["Access-Control-Allow-Origin"] = policy.allow_origin(origin)
    response.headers["Access-Control-Allow-Methods"] = _ALLOWED_METHODS
    response.headers["Access-Control-Allow-Headers"] = (
        requested if len(requested) <= 4 * _SHOWN and _HEADER_NAMES.fullmatch(requested) else _DEFAULT_ALLOWED_HEADERS
    )
    response.headers["Access-Control-Max-Age"] = _PREFLIGHT_MAX_AGE
    return response


def install_browser_checks(app: QuartTrio, config: Config, *, bound_host: str) -> None:
    """The checks of this module's docstring, for an app listening on ``bound_host``; install before the token check."""
    policy = _Policy.of(config, bound_host)

    @app.before_request
    async def check() -> Response | None:
        headers = request.headers
        hosts = headers.getlist("Host")
        # No Host at all: HTTP/1.0, never a browser.
        for host in hosts:
            if not policy.host_allowed(host):
                raise ServerError(
                    ErrorKind.MISDIRECTED,
                    f"this server does not answer to the Host {_shown(host)}: use a loopback name or "
                    "the address it listens on, or add the name to MLX_ALLOWED_HOSTS",
                    code="host_not_allowed",
                    close_connection=True,
                )
        origins = headers.getlist("Origin")
        if request.method == "OPTIONS" and origins and "Access-Control-Request-Method" in headers:
            return _preflight(policy, origins[0], headers)
        if request.method not in _STATE_CHANGING:
            return None
        for origin in origins:
            if not policy.origin_allowed(origin, hosts[0] if hosts else None):
                raise _foreign_origin(origin)
        content_type = headers.get("Content-Type")
        if (content_type is not None or _has_body(headers)) and not _is_json(content_type or ""):
            stated = "no Content-Type" if content_type is None else f"Content-Type {_shown(content_type)}"
            raise ServerError(
                ErrorKind.UNSUPPORTED_MEDIA_TYPE,
                f"a request body must be JSON (Content-Type: application/json), not {stated}",
                code="unsupported_content_type",
                close_connection=True,
            )
        return None

    if not policy.cors_origins:
        return

    @app.after_request
    async def allow(response: Response) -> Response:
        # Every answer varies by Origin once some origins get the header: caches must not mix them.
        response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin is not None and policy.cors_allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = policy.allow_origin(origin)
            response.headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
        return response
