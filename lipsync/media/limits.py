"""Sizes a media file may claim before anything is decoded: a crafted header must not make a
decoder allocate gigabytes (a PNG claiming 100,000 x 100,000 pixels, a WAV claiming ten hours).

Both limits are read from the environment on each call, so a deployment can move them:

- ``LIPSYNC_MAX_PIXELS``: width x height of an image or video frame (default 64 Mpx: 8K UHD is
  33 Mpx, so every real camera frame fits; one 64 Mpx RGB frame is 192 MB);
- ``LIPSYNC_MAX_MEDIA_SECONDS``: duration of a video or audio stream (default 4 hours; ten hours
  of 16 kHz float audio alone would be 2.3 GB).
"""

from __future__ import annotations

import os
import struct
import zlib

from lipsync.errors import MediaTooLargeError
from lipsync.input_limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SECONDS, PIXELS_ENV, SECONDS_ENV


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if not number > 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return number


def max_pixels() -> int:
    return int(_env_number(PIXELS_ENV, DEFAULT_MAX_PIXELS))


def max_seconds() -> float:
    return _env_number(SECONDS_ENV, DEFAULT_MAX_SECONDS)


def check_pixels(name: str, width: int | None, height: int | None, what: str = "frames") -> None:
    """MediaTooLargeError when ``width`` x ``height`` is over the limit (unknown sizes pass)."""
    if not width or not height:
        return
    width, height = abs(int(width)), abs(int(height))
    limit = max_pixels()
    if width * height > limit:
        raise MediaTooLargeError(
            name, f"claims {what} of {width} x {height} pixels, over the limit of {limit / 1e6:g} Mpx "
                  "(LIPSYNC_MAX_PIXELS); refused before decoding")


def check_seconds(name: str, seconds: float | None, what: str = "a duration") -> None:
    """MediaTooLargeError when ``seconds`` is over the limit (unknown or non-finite values pass)."""
    if seconds is None or not seconds == seconds or seconds == float("inf"):
        return
    limit = max_seconds()
    if seconds > limit:
        raise MediaTooLargeError(
            name, f"claims {what} of {seconds / 3600:.1f} hours, over the limit of {limit / 3600:g} hours "
                  "(LIPSYNC_MAX_MEDIA_SECONDS)")


def image_header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) an image file's header claims, read without decoding; None when the header
    is not one of PNG, JPEG, BMP, WebP, TIFF or cannot be read (the decoder then judges the file)."""
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"BM" and len(head) >= 26:
            size = struct.unpack("<I", head[14:18])[0]
            if size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                return struct.unpack("<HH", head[18:22])
            width, height = struct.unpack("<ii", head[18:26])
            return abs(width), abs(height)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(head)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(head)
    except (struct.error, IndexError):
        return None
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", head[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """The first start-of-frame segment's size (EXIF and other segments before it are skipped)."""
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # segments without a length
            i += 2
            continue
        length = struct.unpack(">H", head[i + 2:i + 4])[0]
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return width, height
        if length < 2:
            return None
        i += 2 + length
    return None


def _tiff_size(head: bytes) -> tuple[int, int] | None:
    order = "<" if head[:2] == b"II" else ">"
    offset = struct.unpack(order + "I", head[4:8])[0]
    count = struct.unpack(order + "H", head[offset:offset + 2])[0]
    found = {}
    for k in range(min(count, 512)):
        entry = head[offset + 2 + 12 * k: offset + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            value = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
            found[tag] = value
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_problem(data: bytes | memoryview) -> str | None:
    """What makes a PNG unsafe to hand to the decoder, or None. OpenCV allocates a chunk's
    claimed length before reading it, so a damaged length field (up to 2 GB) is caught here by
    walking the chunk headers: every chunk must fit in the file, and the IHDR must be intact."""
    data = memoryview(data)
    if bytes(data[:8]) != _PNG_SIGNATURE:
        return None
    if len(data) < 33 or bytes(data[12:16]) != b"IHDR":
        return "damaged PNG: no image header"
    if struct.unpack(">I", data[29:33])[0] != zlib.crc32(data[12:29]):
        return "damaged PNG: the image header fails its checksum"
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        if length > len(data) - pos - 12:
            return (f"damaged or truncated PNG: a chunk at byte {pos} claims {length} bytes, "
                    f"more than the {len(data)} byte file holds")
        if bytes(data[pos + 4:pos + 8]) == b"IEND":
            return None
        pos += length + 12
    return None
