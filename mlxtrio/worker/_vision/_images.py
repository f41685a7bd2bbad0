"""An image's bytes made pixels, in the worker only: decoded within limits, resized, and named by a hash of its pixels."""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from typing import Any

import attrs

from ..._protocol import LOW_DETAIL_PIXELS, ErrorKind, ImageInput
from .._failures import RequestError

__all__ = ["DECODE_MAX_PIXELS", "JPEG_MAX_SCANS", "DecodedImage", "decode_image"]

# The most pixels an image may have to be decoded at all (a 48-megapixel photo fits; a header can claim billions of
# pixels in a few bytes: a decompression bomb); below it, a large image is resized, not refused.
DECODE_MAX_PIXELS = 50_000_000
# The most scans a JPEG may have: a scan costs a few bytes to send and a pass over every block of the image to
# decode, so a few megabytes of them hold the worker's thread for minutes; encoders write a dozen or so.
JPEG_MAX_SCANS = 100
# What clients send (OpenAI and Anthropic take these four); the orchestrator sniffs the same.
_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")


@attrs.frozen
class DecodedImage:
    """An image as the model's processor takes it (RGB), and the digest of its pixels."""

    image: Any
    digest: bytes


def decode_image(source: ImageInput, *, max_pixels: int) -> DecodedImage:
    """``source`` decoded to RGB, resized (its aspect kept) to at most ``max_pixels`` pixels, or
    ``LOW_DETAIL_PIXELS`` with detail "low"; ``RequestError`` naming ``source.where`` if it cannot be."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    where = source.where
    # A scan begins at its marker, which entropy-coded data cannot hold (its 0xFF bytes are stuffed with 0x00).
    if source.data.startswith(b"\xff\xd8") and (scans := source.data.count(b"\xff\xda")) > JPEG_MAX_SCANS:
        raise RequestError(
            ErrorKind.INVALID_REQUEST, f"{where}: the JPEG has {scans} scans; at most {JPEG_MAX_SCANS} are decoded", param=where
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns (or raises) at its limit: ours, below, decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source.data), formats=_FORMATS)
            width, height = image.size
            if width * height > DECODE_MAX_PIXELS:
                raise RequestError(
                    ErrorKind.INVALID_REQUEST,
                    f"{where}: the image is {width}x{height} pixels; at most {DECODE_MAX_PIXELS} pixels can be decoded",
                    param=where,
                )
            limit = min(max_pixels, LOW_DETAIL_PIXELS) if source.detail == "low" else max_pixels
            if width * height > limit and image.format == "JPEG":
                # JPEG decodes at 1/2, 1/4 or 1/8 scale for nearly nothing: a large photo is not decoded whole.
                image.draft("RGB", _scaled(width, height, limit))
            image.seek(0)  # an animation's first frame
            # A camera's photo is stored as its sensor saw it, with the turn to show it upright in its EXIF data.
            image = ImageOps.exif_transpose(image).convert("RGB")
    except RequestError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise RequestError(ErrorKind.INVALID_REQUEST, f"{where}: not a PNG, JPEG, WebP or GIF image that can be decoded ({exc})", param=where) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise RequestError(ErrorKind.INVALID_REQUEST, f"{where}: the image is corrupt or truncated ({exc})", param=where) from None
    if image.width * image.height > limit:
        image = image.resize(_scaled(image.width, image.height, limit), Image.Resampling.BICUBIC)
    digest = hashlib.blake2b(f"{image.width}x{image.height}:".encode(), digest_size=16, person=b"mlxtrio-image")
    digest.update(image.tobytes())
    return DecodedImage(image, digest.digest())


def _scaled(width: int, height: int, limit: int) -> tuple[int, int]:
    """``width`` x ``height`` scaled down, aspect kept, to at most ``limit`` pixels (at least 1 x 1)."""
    scale = math.sqrt(limit / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))
