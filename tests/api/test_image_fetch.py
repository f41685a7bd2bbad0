"""The image fetcher (api/_fetch.py) against a real local HTTP(S) server: what a public server refuses, and its caps.

The real policy refuses 127.0.0.1, so most tests pass a policy that allows exactly it: anything else, redirects
included, is still refused. The certificates in fetch_tls/ are a test CA (ca.pem) and a leaf for IP 127.0.0.1
signed by it (server.pem, with its key), valid for a century.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from mlxtrio._errors import ServerError
from mlxtrio._protocol import ErrorKind
from mlxtrio.api import _images
from mlxtrio.api._fetch import fetch_image
from mlxtrio.api._fetch_policy import is_public_address
from mlxtrio.api._images import ImageSource

from ..helpers import bounded, make_config

TLS = Path(__file__).with_name("fetch_tls")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(56))
MAX = 1000
WHERE = "messages[0].content[1]"
SECRET = "s3cret-body"
THIS_HOST = ipaddress.ip_address("127.0.0.1")


def only_this_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address == THIS_HOST


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Site

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.close_connection = True
        self.server.seen.append(self.headers)
        path, _, query = self.path.partition("?")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if path == "/image.png":
                self.answer(200, {"Content-Type": "image/png"}, PNG)
            elif path == "/page":
                self.answer(200, {"Content-Type": "text/html; charset=utf-8"}, f"<p>{SECRET}</p>".encode())
            elif path == "/to":
                self.answer(302, {"Location": urllib.parse.unquote(query)}, b"")
            elif path.startswith("/hops/"):
                left = int(path.removeprefix("/hops/"))
                if left:
                    self.answer(302, {"Location": f"{left - 1}"}, b"")
                else:
                    self.answer(200, {"Content-Type": "image/png"}, PNG)
            elif path == "/large":
                self.answer(200, {"Content-Type": "image/png"}, PNG + bytes(MAX + 1 - len(PNG)))
            elif path == "/chunked":
                self.chunks(lambda sent: sent < 8 * MAX, pause=0)
            elif path == "/until-close":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(PNG + bytes(8 * MAX))
            elif path == "/slow":
                self.chunks(lambda sent: not self.server.stopping.is_set(), pause=0.05)
            else:
                self.answer(404, {"Content-Type": "text/plain"}, SECRET.encode())

    def answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def chunks(self, more, *, pause: float) -> None:
        """A chunked image with no length: 100-byte chunks while ``more(sent)``, ``pause`` seconds apart."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        while more(sent):
            self.wfile.write(b"64\r\n" + bytes(100) + b"\r\n")
            self.wfile.flush()
            sent += 100
            self.server.stopping.wait(pause)
        self.wfile.write(b"0\r\n\r\n")


class Site(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list = []
        self.stopping = threading.Event()
        self.tls = tls

    def get_request(self):
        connection, address = super().get_request()
        if self.tls is not None:
            # The handshake happens in the handler's thread, so a client that refuses the certificate stalls nothing.
            connection = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def handle_error(self, request, client_address) -> None:
        pass  # a client that refuses the certificate or hangs up mid-body is what several tests are about

    @property
    def port(self) -> int:
        return self.server_address[1]


@contextlib.contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[Site]:
    site = Site(tls)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        site.stopping.set()
        site.shutdown()
        site.server_close()
        thread.join()


@pytest.fixture
def site() -> Iterator[Site]:
    with serving() as site:
        yield site


@pytest.fixture
def tls_site() -> Iterator[Site]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(TLS / "server.pem")
    with serving(context) as site:
        yield site


@attrs.frozen
class Refusal:
    kind: ErrorKind
    message: str


async def refusal(url: str, *, max_bytes: int = MAX, timeout: float = 5.0, **options) -> Refusal:
    with pytest.raises(ServerError) as caught:
        await fetch_image(url, max_bytes=max_bytes, timeout=timeout, where=WHERE, **options)
    error = caught.value
    assert error.param == WHERE
    assert error.message.startswith(f"{WHERE}: ")
    assert SECRET not in error.message
    return Refusal(error.kind, error.message)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.255.255.254", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "100.100.100.200", "0.0.0.0", "0.1.2.3", "224.0.1.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
        "198.18.0.1", "192.0.2.1", "::1", "::", "fd00::1", "fc00::1", "fe80::1", "fec0::1", "ff02::1", "ff0e::1",
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "64:ff9b::a00:1",
        "2002:7f00:1::1", "2002:a9fe:a9fe::1", "2001:db8::1", "2001::1", "fd00:ec2::254",
    ],
)
def test_the_public_policy_refuses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450::1"])
def test_the_public_policy_allows(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


@bounded(20)
async def test_hosts_that_are_not_public_are_refused_by_default(site: Site) -> None:
    port = site.port
    for host in [
        f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"2130706433:{port}", f"0.0.0.0:{port}",
        f"[::ffff:127.0.0.1]:{port}", "10.1.2.3", "192.168.1.1", "169.254.169.254", "[fd00::1]", "100.64.0.1",
    ]:
        refused = await refusal(f"http://{host}/image.png")
        assert refused.kind is ErrorKind.INVALID_REQUEST
        assert "not public" in refused.message, refused.message
    for name in ["metadata.google.internal", "METADATA.google.internal.", "metadata", "instance-data"]:
        refused = await refusal(f"http://{name}/computeMetadata/v1/")
        assert "metadata" in refused.message, refused.message
    assert site.seen == [], "the local server was reached"


@bounded(20)
async def test_other_schemes_and_credentials_are_refused(site: Site) -> None:
    for url, why in [
        ("file:///etc/passwd", "http or https"),
        ("ftp://example.com/a.png", "http or https"),
        ("data:image/png;base64,iVBORw0KGgo=", "http or https"),
        ("gopher://127.0.0.1/", "http or https"),
        ("//example.com/a.png", "http or https"),
        (f"http://user:pass@127.0.0.1:{site.port}/image.png", "credentials"),
        (f"http://user@127.0.0.1:{site.port}/image.png", "credentials"),
        ("http:///image.png", "no host"),
        (f"http://127.0.0.1:{2**16}/image.png", "port"),
    ]:
        refused = await refusal(url, address_allowed=only_this_host)
        assert refused.kind is ErrorKind.INVALID_REQUEST
        assert why in refused.message, refused.message
    assert site.seen == [], "the local server was reached"


@bounded(20)
async def test_an_image_is_fetched_with_plain_headers(site: Site) -> None:
    url = f"http://127.0.0.1:{site.port}/image.png?size=small#top"
    assert await fetch_image(url, max_bytes=MAX, timeout=5, where=WHERE, address_allowed=only_this_host) == PNG
    [headers] = site.seen
    assert headers["Host"] == f"127.0.0.1:{site.port}"
    assert headers["Accept"] == "image/*"
    assert headers["User-Agent"] == "mlxtrio"
    assert "Cookie" not in headers and "Authorization" not in headers


@bounded(20)
async def test_redirects_are_followed_up_to_three_each_checked(site: Site) -> None:
    base = f"http://127.0.0.1:{site.port}"
    fetch = dict(max_bytes=MAX, timeout=5, where=WHERE, address_allowed=only_this_host)
    assert await fetch_image(f"{base}/hops/3", **fetch) == PNG
    assert await fetch_image(f"{base}/to?" + urllib.parse.quote(f"{base}/image.png"), **fetch) == PNG
    assert await fetch_image(f"{base}/to?/image.png", **fetch) == PNG
    site.seen.clear()
    refused = await refusal(f"{base}/hops/4", address_allowed=only_this_host)
    assert "more than 3 redirects" in refused.message, refused.message
    assert len(site.seen) == 4, "the fourth redirect was followed"

    for target, why in [
        (f"http://127.0.0.2:{site.port}/image.png", "not public"),
        ("http://10.0.0.1/image.png", "not public"),
        ("http://169.254.169.254/latest/meta-data/", "not public"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", "not public"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("file:///etc/passwd", "http or https"),
        (f"http://user:pass@127.0.0.1:{site.port}/image.png", "credentials"),
        ("http://[::1/image.png", "not a valid URL"),
    ]:
        site.seen.clear()
        refused = await refusal(f"{base}/to?" + urllib.parse.quote(target), address_allowed=only_this_host)
        assert refused.kind is ErrorKind.INVALID_REQUEST
        assert why in refused.message and "redirect" in refused.message, refused.message
        assert len(site.seen) == 1, "the redirect's target was fetched"


@bounded(20)
async def test_a_body_past_the_limit_is_cut(site: Site) -> None:
    for path in ["/large", "/chunked", "/until-close"]:
        refused = await refusal(f"http://127.0.0.1:{site.port}{path}", address_allowed=only_this_host)
        assert refused.kind is ErrorKind.TOO_LARGE
        assert f"at most {MAX}" in refused.message and "MLX_IMAGE_MAX_BYTES" in refused.message, refused.message
    # The same bodies within a larger limit arrive whole: the cut is the limit's, not the framing's.
    fetch = dict(max_bytes=16 * MAX, timeout=5, where=WHERE, address_allowed=only_this_host)
    assert len(await fetch_image(f"http://127.0.0.1:{site.port}/chunked", **fetch)) == 8 * MAX
    assert len(await fetch_image(f"http://127.0.0.1:{site.port}/until-close", **fetch)) == len(PNG) + 8 * MAX


@bounded(20)
async def test_a_body_that_trickles_forever_is_cut_at_the_time_out(site: Site) -> None:
    started = trio.current_time()
    refused = await refusal(f"http://127.0.0.1:{site.port}/slow", timeout=0.5, address_allowed=only_this_host)
    assert trio.current_time() - started < 2
    assert refused.kind is ErrorKind.INVALID_REQUEST
    assert "0.5 s" in refused.message and "MLX_IMAGE_FETCH_TIMEOUT" in refused.message, refused.message


@bounded(20)
async def test_answers_that_are_not_images_are_refused(site: Site) -> None:
    refused = await refusal(f"http://127.0.0.1:{site.port}/page", address_allowed=only_this_host)
    assert refused.kind is ErrorKind.INVALID_REQUEST
    assert "text/html" in refused.message and "not an image" in refused.message, refused.message
    refused = await refusal(f"http://127.0.0.1:{site.port}/missing.png", address_allowed=only_this_host)
    assert refused.kind is ErrorKind.INVALID_REQUEST
    assert "HTTP 404" in refused.message, refused.message


@bounded(20)
async def test_a_connection_that_fails_is_a_400() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = await refusal(f"http://127.0.0.1:{port}/image.png", address_allowed=only_this_host)
    assert refused.kind is ErrorKind.INVALID_REQUEST
    assert "could not fetch" in refused.message, refused.message


@bounded(20)
async def test_https_verifies_the_certificate(tls_site: Site, site: Site) -> None:
    url = f"https://127.0.0.1:{tls_site.port}/image.png"
    trusting = ssl.create_default_context(cafile=TLS / "ca.pem")
    fetch = dict(max_bytes=MAX, timeout=5, where=WHERE, address_allowed=only_this_host)
    assert await fetch_image(url, **fetch, ssl_context=trusting) == PNG
    # The system's trust store does not hold the test CA.
    refused = await refusal(url, address_allowed=only_this_host)
    assert "could not fetch" in refused.message and "TLS" in refused.message, refused.message
    # Nor is plain HTTP taken for TLS.
    refused = await refusal(f"https://127.0.0.1:{site.port}/image.png", address_allowed=only_this_host)
    assert "could not fetch" in refused.message, refused.message


@attrs.define
class Resolver(trio.abc.HostnameResolver):
    """Names resolved as a test says, each resolution counted: what a rebinding DNS server would answer."""

    answers: dict[bytes, list[str]]
    asked: list[bytes] = attrs.Factory(list)

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
            for address in self.answers[host]
        ]

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


@bounded(20)
async def test_a_name_is_resolved_once_and_every_address_must_be_allowed(site: Site) -> None:
    resolver = Resolver({b"images.test": ["127.0.0.1"], b"mixed.test": ["127.0.0.1", "10.0.0.1"]})
    trio.socket.set_custom_hostname_resolver(resolver)
    fetch = dict(max_bytes=MAX, timeout=5, where=WHERE, address_allowed=only_this_host)
    assert await fetch_image(f"http://images.test:{site.port}/image.png", **fetch) == PNG
    assert resolver.asked == [b"images.test"], "the name was resolved again to connect"
    assert site.seen[-1]["Host"] == f"images.test:{site.port}"
    site.seen.clear()
    refused = await refusal(f"http://mixed.test:{site.port}/image.png", address_allowed=only_this_host)
    assert "not public" in refused.message, refused.message
    assert site.seen == [], "a host with one refused address was fetched from its allowed one"
    refused = await refusal(f"http://gone.test:{site.port}/image.png", address_allowed=only_this_host)
    assert "could not fetch" in refused.message and "does not resolve" in refused.message, refused.message


@bounded(20)
async def test_a_request_s_fetches_stop_together_at_what_a_body_may_carry(site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fetch is held to MLX_IMAGE_MAX_BYTES, and all of a request's together to MLX_MAX_BODY_BYTES while they
    run: a request of many URLs to large images holds no more than a body may."""
    monkeypatch.setattr(_images, "fetch_image", functools.partial(fetch_image, address_allowed=only_this_host))
    config = make_config(tmp_path, tmp_path, image_fetch=True, image_fetch_timeout=10.0, image_max_bytes=100 * MAX, max_body_bytes=4 * MAX)
    sources = [ImageSource(where=f"messages[0].content[{index}]", url=f"http://127.0.0.1:{site.port}/slow") for index in range(4)]
    started = trio.current_time()
    with pytest.raises(ServerError) as refused:
        await _images.load_images(sources, config)
    # Four trickles of 100 bytes every 50 ms pass 4000 bytes together in half a second, each its own limit in 12.
    assert trio.current_time() - started < 5
    assert refused.value.kind is ErrorKind.TOO_LARGE and "MLX_MAX_BODY_BYTES" in refused.value.message, refused.value.message
