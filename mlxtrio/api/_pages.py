"""The web pages: the playground on the main port, the dashboard on the admin port, as static files of the package.

A page is a folder of ``_web/`` with its ``index.html``, served at ``/``;
its files, the vendored libraries and the pages' shared files are served
under ``/ui/``. The files are read once, when the app is made: nothing a
request names reaches the filesystem, and a page costs no disk read.

The pages are open (no key, no token): they hold no secret, and a browser
sends no ``Authorization`` header when it opens a page. Each page asks for
the key or token when its API answers 401, and sends it with every request
it makes, which the API checks as it checks any client's.

Their Content-Security-Policy lets them run their own scripts and styles
only, reach their own origin only, and be framed by no one: text a model
writes cannot become a script, even if it reached the page as HTML.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable

import attrs
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound

__all__ = ["PREFIX", "WebPage"]

PREFIX = "/ui"
# The folders every page may use beside its own.
_SHARED = ("common", "vendor")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # data: and blob: for the image a user attaches, shown before it is sent.
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_HEADERS = {
    "Content-Security-Policy": _POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # A new server version's files are fetched again, not taken from a cache.
    "Cache-Control": "no-cache",
}


def _files(page: str) -> dict[str, tuple[bytes, str]]:
    """``/ui/...`` path → (bytes, content type), for ``page``'s folder and the shared ones."""
    root = resources.files(__package__) / "_web"
    found: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Traversable, path: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{path}/{entry.name}")
                continue
            suffix = "." + entry.name.rpartition(".")[2]
            if suffix in _TYPES:
                found[f"{path}/{entry.name}"] = (entry.read_bytes(), _TYPES[suffix])

    for folder in (page, *_SHARED):
        walk(root / folder, f"{PREFIX}/{folder}")
    return found


def _response(body: bytes, content_type: str) -> Response:
    response = Response(body, status=200, content_type=content_type)
    response.headers.update(_HEADERS)
    return response


@attrs.frozen
class WebPage:
    """One page: ``_web/<name>/index.html`` at ``/``, its files and the shared ones under ``/ui/``."""

    name: str
    files: dict[str, tuple[bytes, str]]

    @classmethod
    def read(cls, name: str) -> WebPage:
        return cls(name, _files(name))

    @property
    def paths(self) -> frozenset[str]:
        """What the page serves: open paths, for the key or token check."""
        return frozenset({"/", *self.files})

    def install(self, app: QuartTrio, *, for_other_clients: Callable[[], Response] | None = None) -> None:
        """Serve the page; ``/`` answers ``for_other_clients()`` to a client that does not ask for HTML by name."""
        index = self.files[f"{PREFIX}/{self.name}/index.html"]
        files = self.files

        @app.get("/")
        async def page_index() -> Response:
            # A browser names text/html in its Accept header; an API client's probe (Ollama's) sends */* or nothing.
            if for_other_clients is not None and not any(value == "text/html" and quality > 0 for value, quality in request.accept_mimetypes):
                return for_other_clients()
            return _response(*index)

        @app.get(f"{PREFIX}/<path:name>")
        async def page_file(name: str) -> Response:
            found = files.get(f"{PREFIX}/{name}")
            if found is None:
                raise NotFound()
            return _response(*found)
