"""A request's images: each reference (a data: URL, an http(s) URL) made the bytes the worker decodes, within the server's limits.

Every surface gathers its images here in order of appearance, each message
part that holds one naming it by its index (``Generate.images``), and loads
them in its handler before the request goes to the worker: whatever is
wrong with an image is a 4xx naming its part, before any 200. The
orchestrator never decodes pixels: it base64-decodes data: URLs (bounded by
the body limit), fetches http(s) ones only where the operator turned that on
(``api/_fetch.py``), checks counts and sizes, and tells the format by the
first bytes; the worker decodes, and resizes to ``MLX_IMAGE_MAX_PIXELS``.
"""

from __future__ import annotations

import binascii
import functools
from collections.abc import Sequence

import attrs
import trio

from .. import _protocol as p
from .._config import Config
from .._errors import ErrorKind, ServerError
from ._fetch import fetch_image

__all__ = ["DETAILS", "ImageSource", "ImageSources", "check_detail", "load_images", "parts_message"]

DETAILS = ("auto", "low", "high")
# The formats a worker decodes, by their first bytes.
_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"))


def _invalid(where: str, message: str) -> ServerError:
    return ServerError(ErrorKind.INVALID_REQUEST, f"{where}: {message}", param=where)


def _too_large(where: str, size: int, max_bytes: int) -> ServerError:
    return ServerError(ErrorKind.TOO_LARGE, f"{where}: the image is {size} bytes; at most {max_bytes} (MLX_IMAGE_MAX_BYTES)", param=where)


def _past_body(where: str, max_body_bytes: int) -> ServerError:
    return ServerError(
        ErrorKind.TOO_LARGE,
        f"{where}: the request's images come to more than {max_body_bytes} bytes, the most a request may carry (MLX_MAX_BODY_BYTES)",
        param=where,
    )


def check_detail(detail: str | None, where: str) -> str:
    """OpenAI's ``detail`` (None: "auto"), or a 400 naming ``where``."""
    if detail is None:
        return "auto"
    if detail not in DETAILS:
        raise _invalid(where, f"one of {', '.join(DETAILS)}, not {detail[:20]!r}")
    return detail


@attrs.frozen(kw_only=True)
class ImageSource:
    """One image as a request refers to it, not checked yet."""

    # The request's field that holds it (``messages[0].content[1]``).
    where: str
    # A data: or http(s) URL; with ``media_type``, the base64 data alone (Anthropic's base64 source).
    url: str
    media_type: str | None = None
    detail: str = "auto"


@attrs.define
class ImageSources:
    """A request's images in order of appearance."""

    found: list[ImageSource] = attrs.Factory(list)

    def part(self, source: ImageSource) -> p.ContentPart:
        """The message part that names ``source``."""
        self.found.append(source)
        return p.ContentPart(image=len(self.found) - 1)


def parts_message(role: str, parts: Sequence[p.ContentPart], *, joiner: str, **fields: object) -> p.ChatMessage:
    """A chat message of text and image parts in order: its content the text parts joined (as the surface joins a
    message without images), and ``parts`` only where it holds an image."""
    text = joiner.join(part.text for part in parts if part.image < 0)
    with_image = any(part.image >= 0 for part in parts)
    return p.ChatMessage(role, text, parts=tuple(parts) if with_image else (), **fields)  # type: ignore[arg-type]


def _sniffed(data: bytes, where: str) -> bytes:
    if any(data.startswith(signature) for signature, _ in _SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return data
    raise _invalid(where, "not a PNG, JPEG, WebP or GIF image")


def _base64(payload: str, media_type: str, where: str, max_bytes: int) -> bytes:
    """The image a base64 payload holds: its size checked from its length before it is decoded, and after."""
    if not media_type.lower().startswith("image/"):
        raise _invalid(where, f"the media type is {media_type[:40]!r}, not an image's (image/png, image/jpeg, image/webp, image/gif)")
    if not payload:
        raise _invalid(where, "the image data is empty")
    size = len(payload) // 4 * 3 - payload.endswith("=") - payload.endswith("==")
    if size > max_bytes:
        raise _too_large(where, size, max_bytes)
    try:
        data = binascii.a2b_base64(payload.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _invalid(where, "the image data is not base64 (the standard alphabet, padded, with no whitespace)") from None
    if len(data) > max_bytes:
        raise _too_large(where, len(data), max_bytes)
    return _sniffed(data, where)


def _data_url(url: str, where: str, max_bytes: int) -> bytes:
    header, comma, payload = url.partition(",")
    fields = header[len("data:") :].split(";")
    if not comma or len(fields) < 2 or fields[-1].strip().lower() != "base64":
        raise _invalid(where, "a data: URL's image is base64: data:image/png;base64,<the data>")
    return _base64(payload, fields[0].strip(), where, max_bytes)


def _scheme(url: str) -> str:
    scheme, colon, _ = url.partition(":")
    return scheme.lower() if colon else ""


def _decoded(source: ImageSource, config: Config) -> bytes | None:
    """The bytes of a data: URL or base64 source; None for a URL to fetch; a 4xx for anything else."""
    where, url = source.where, source.url
    if source.media_type is not None:
        return _base64(url, source.media_type, where, config.image_max_bytes)
    scheme = _scheme(url)
    if scheme == "data":
        return _data_url(url, where, config.image_max_bytes)
    if scheme in ("http", "https"):
        if not config.image_fetch:
            raise _invalid(
                where,
                "image URLs are not fetched by this server; send the image as a data: URL (base64), or the operator may set MLX_IMAGE_FETCH=1",
            )
        return None
    if not url:
        raise _invalid(where, "the image URL is empty")
    # Local paths and file: URLs above all: the server's files are not the client's to read.
    raise _invalid(where, f"an image is a data: URL (base64) or an http(s) URL, not {url[:40]!r}; local files are never opened")


async def load_images(sources: Sequence[ImageSource], config: Config) -> tuple[p.ImageInput, ...]:
    """Each image's bytes, checked: the count first, then every data: URL, then the URLs to fetch (at once, each
    within MLX_IMAGE_FETCH_TIMEOUT); the first problem in order of appearance is the error."""
    if len(sources) > config.images_per_request:
        where = sources[config.images_per_request].where
        raise _invalid(where, f"at most {config.images_per_request} images per request (MLX_IMAGES_PER_REQUEST); the request has {len(sources)}")
    found: list[bytes | ServerError | None] = [_decoded(source, config) for source in sources]
    if any(data is None for data in found):
        # The bytes held so far: fetches stop together once they pass what a body may carry, not each at its own limit.
        held = sum(len(data) for data in found if data is not None)

        def received(source: ImageSource, size: int) -> None:
            nonlocal held
            held += size
            if held > config.max_body_bytes:
                raise _past_body(source.where, config.max_body_bytes)

        async def fetch(index: int) -> None:
            source = sources[index]
            try:
                data = await fetch_image(
                    source.url,
                    max_bytes=config.image_max_bytes,
                    timeout=config.image_fetch_timeout,
                    where=source.where,
                    received=functools.partial(received, source),
                )
                if len(data) > config.image_max_bytes:
                    raise _too_large(source.where, len(data), config.image_max_bytes)
                found[index] = _sniffed(data, source.where)
            except ServerError as exc:
                found[index] = exc

        async with trio.open_nursery() as nursery:
            for index, data in enumerate(found):
                if data is None:
                    nursery.start_soon(fetch, index)
    total = 0
    for data, source in zip(found, sources, strict=True):
        if isinstance(data, ServerError):
            raise data
        total += len(data)  # type: ignore[arg-type]
        if total > config.max_body_bytes:
            # Fetched images are not bounded by the body: all of a request's go to the worker in one message.
            raise _past_body(source.where, config.max_body_bytes)
    return tuple(p.ImageInput(data, source.where, source.detail) for data, source in zip(found, sources, strict=True))  # type: ignore[arg-type]
