"""What an encoded image says about itself before anything is decoded.

`image_format` identifies the formats we accept by their signature bytes (not
by the file extension), `image_dimensions` reads width and height from the
header (JPEG SOF, PNG IHDR, BMP DIB header, GIF logical screen, WebP VP8/VP8L/
VP8X, TIFF first IFD), and `truncation` says why a file is cut short. All of
them read a few bytes, so a decompression bomb (a 1 MB PNG that claims
30,000 x 30,000 pixels) is refused before a decoder allocates its pixels.
"""

from __future__ import annotations

import struct

_PNG = b"\x89PNG\r\n\x1a\n"


def image_format(data: bytes) -> str | None:
    """`"jpeg"`, `"png"`, `"bmp"`, `"gif"`, `"webp"` or `"tiff"` from the first bytes, else None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG:
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "tiff"
    return None


def jpeg_layout(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, offset of the first scan) from a JPEG's markers, or None if unparsable.

    Walking the marker segments by their lengths skips APPn payloads, so the
    EXIF thumbnail (a whole JPEG with its own SOF, SOS and EOI inside APP1)
    is never mistaken for the image.
    """
    size, pos, n = None, 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and pos + 9 <= n:
            size = (int.from_bytes(data[pos + 5 : pos + 7], "big"),
                    int.from_bytes(data[pos + 7 : pos + 9], "big"))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return (*size, pos) if size else None
        pos += 2 + length
    return None


def truncation(data: bytes) -> str | None:
    """Why a file is cut short, or None. cv2 decodes a cut JPEG or PNG anyway (grey rest)."""
    if data[:2] == b"\xff\xd8":
        layout = jpeg_layout(data)
        # Entropy-coded data never holds FF D9 (0xFF is stuffed as FF 00), so the
        # image is whole iff an EOI follows its first scan. Data after the EOI
        # (camera trailers) is allowed.
        if layout is None or data.rfind(b"\xff\xd9") < layout[2]:
            return "truncated (JPEG without its end-of-image marker)"
    elif data[:8] == _PNG:
        if b"IEND" not in data[-1024:]:
            return "truncated (PNG without its IEND chunk)"
        if _png_chunks_overrun(data):
            return "truncated (PNG chunk longer than the rest of the file)"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        if len(data) < int.from_bytes(data[4:8], "little") + 8:
            return "truncated (WebP shorter than its RIFF size)"
    return None


def _png_chunks_overrun(data: bytes) -> bool:
    """Whether a chunk's stated length runs past the end of the file.

    OpenCV allocates a chunk's stated length before reading it: one flipped
    length byte in a 3 KB PNG made it allocate 3.7 GB (found by the fuzz test).
    """
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        if pos + 12 + length > n:
            return True
        if data[pos + 4 : pos + 8] == b"IEND":
            return False
        pos += 12 + length
    return False


def _jpeg(data: bytes) -> tuple[int, int] | None:
    layout = jpeg_layout(data)
    return (layout[1], layout[0]) if layout else None


def _png(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


def _bmp(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    if int.from_bytes(data[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # a negative height means top-down rows


def _gif(data: bytes) -> tuple[int, int] | None:
    return struct.unpack("<HH", data[6:10]) if len(data) >= 10 else None


def _webp(data: bytes) -> tuple[int, int] | None:
    kind, body = data[12:16], data[20:]
    if kind == b"VP8X" and len(body) >= 10:  # extended: 24-bit canvas size minus one
        return (int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1)
    if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:  # lossless: 14-bit fields
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":  # lossy key frame
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff(data: bytes) -> tuple[int, int] | None:
    """Width and height from the first IFD (the page `cv2.imdecode` reads), TIFF or BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    try:
        if big:
            (ifd,) = struct.unpack(order + "Q", data[8:16])
            (count,) = struct.unpack(order + "Q", data[ifd : ifd + 8])
            first, entry_size = ifd + 8, 20
        else:
            (ifd,) = struct.unpack(order + "I", data[4:8])
            (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
            first, entry_size = ifd + 2, 12
        sizes = {}
        for pos in range(first, first + min(count, 4096) * entry_size, entry_size):
            tag, kind = struct.unpack(order + "HH", data[pos : pos + 4])
            if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3), LONG (4) or LONG8 (16)
                value = data[pos + (12 if big else 8) : pos + entry_size]
                fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if fmt is None:
                    return None
                (sizes[tag],) = struct.unpack_from(order + fmt, value)
        return (sizes[256], sizes[257]) if len(sizes) == 2 else None
    except (struct.error, KeyError):
        return None


_DIMENSIONS = {"jpeg": _jpeg, "png": _png, "bmp": _bmp, "gif": _gif, "webp": _webp,
               "tiff": _tiff}


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """`(width, height)` as the header states it, or None (unknown format, damaged header).

    Example:
        >>> image_dimensions(open("photo.jpg", "rb").read())
        (4032, 3024)
    """
    kind = image_format(data)
    return _DIMENSIONS[kind](data) if kind else None
