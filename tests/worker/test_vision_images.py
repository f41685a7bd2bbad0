"""An image's decoding in the worker: resized within the limit, refused past what can be decoded, named where it fails."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from mlxtrio._protocol import LOW_DETAIL_PIXELS, ErrorKind, ImageInput
from mlxtrio.worker._failures import RequestError
from mlxtrio.worker._vision._images import DECODE_MAX_PIXELS, decode_image

WHERE = "messages[0].content[1]"


def encoded(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def source(data: bytes, detail: str = "auto") -> ImageInput:
    return ImageInput(data, WHERE, detail)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP", "GIF"])
def test_each_format_decodes_to_rgb(format: str) -> None:
    decoded = decode_image(source(encoded(Image.new("RGB", (40, 30), (200, 10, 10)), format)), max_pixels=10_000)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (40, 30)


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_a_large_image_is_resized_with_its_aspect(format: str) -> None:
    decoded = decode_image(source(encoded(Image.new("RGB", (4000, 1000), (0, 90, 0)), format)), max_pixels=40_000)
    width, height = decoded.image.size
    assert width * height <= 40_000
    assert width * height > 30_000  # not shrunk far past the limit (JPEG's draft decodes near it, then resizes)
    assert abs(width / height - 4.0) < 0.1


def test_low_detail_holds_an_image_to_its_own_limit() -> None:
    data = encoded(Image.new("RGB", (2000, 2000)))
    assert decode_image(source(data, "low"), max_pixels=4_000_000).image.size[0] ** 2 <= LOW_DETAIL_PIXELS
    assert decode_image(source(data, "high"), max_pixels=4_000_000).image.size == (2000, 2000)


def test_an_image_past_what_can_be_decoded_is_refused_from_its_header() -> None:
    # A solid PNG this large is a few kilobytes: its size is read from its header, never decoded.
    side = int(DECODE_MAX_PIXELS**0.5) + 10
    data = encoded(Image.new("1", (side, side)))
    with pytest.raises(RequestError) as refused:
        decode_image(source(data), max_pixels=1_000_000)
    assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert refused.value.param == WHERE
    assert f"{side}x{side}" in str(refused.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", encoded(Image.new("RGB", (64, 64)))[:60], b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, encoded(Image.new("RGB", (8, 8)), "BMP")],
    ids=["empty", "text", "truncated-png", "png-signature-only", "bmp"],
)
def test_what_cannot_be_decoded_is_refused_naming_its_part(data: bytes) -> None:
    with pytest.raises(RequestError) as refused:
        decode_image(source(data), max_pixels=10_000)
    assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert refused.value.param == WHERE
    assert str(refused.value).startswith(WHERE)


def test_an_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(source(out.getvalue()), max_pixels=10_000)
    assert decoded.image.getpixel((0, 0))[0] > 200


def test_the_digest_follows_the_pixels_not_the_encoding() -> None:
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    as_png = decode_image(source(encoded(red, "PNG")), max_pixels=10_000).digest
    as_png_again = decode_image(source(encoded(red, "PNG", compress_level=1)), max_pixels=10_000).digest
    blue = decode_image(source(encoded(Image.new("RGB", (32, 32), (0, 0, 255)), "PNG")), max_pixels=10_000).digest
    taller = decode_image(source(encoded(Image.new("RGB", (16, 64), (255, 0, 0)), "PNG")), max_pixels=10_000).digest
    assert as_png == as_png_again
    assert len({as_png, blue, taller}) == 3


def with_scans(side: int, scans: int) -> bytes:
    """A grey progressive JPEG and ``scans`` more scans of it: each a few bytes (one run of empty blocks after
    another), each a pass over every block of the image when decoded."""
    base = encoded(Image.new("L", (side, side), 128), "JPEG", progressive=True)
    blocks = ((side + 7) // 8) ** 2
    # An AC table of one symbol, code "0": a run of 2**14 empty blocks and 14 bits more.
    table = b"\xff\xc4" + struct.pack(">H", 20) + bytes([0x11, 1, *[0] * 15, 0xE0])
    count = -(-blocks // 32767)
    bits = "".join("0" + format(blocks // count + (i < blocks % count) - 16384, "014b") for i in range(count))
    bits += "1" * (-len(bits) % 8)
    data = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    scan = b"\xff\xda" + struct.pack(">H", 8) + bytes([1, 1, 0x01, 1, 63, 0]) + data
    return base[:-2] + table + scan * scans + b"\xff\xd9"


def test_a_jpeg_of_many_scans_is_refused_before_it_is_decoded() -> None:
    # A scan costs a few bytes to send and a pass over the whole image to decode: a few megabytes of them
    # would hold the worker's thread for many minutes.
    scans = with_scans(1024, 2000)
    assert len(scans) < 200_000
    with pytest.raises(RequestError) as refused:
        decode_image(source(scans), max_pixels=10_000)
    assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert refused.value.param == WHERE
    assert "scans" in str(refused.value)
    # A photo's own progressive scans are a handful.
    photo = encoded(Image.effect_noise((256, 256), 40).convert("RGB"), "JPEG", progressive=True)
    assert decode_image(source(photo), max_pixels=10_000).image.size == (100, 100)


def test_a_photo_is_turned_upright_as_its_exif_orientation_says() -> None:
    # 40 x 20 as stored, to be shown turned a quarter (EXIF orientation 6): 20 x 40, the red end on top.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(source(encoded(stored, "JPEG", exif=exif.tobytes())), max_pixels=10_000).image
    assert decoded.size == (20, 40)
    assert decoded.getpixel((10, 2))[0] > 200
