"""One encoded image -> RGB uint8 at the training size: checks, decoding, resizing.

Every image goes through `decode_image`: refused early if empty, cut short,
not one of the accepted formats, or larger than the pixel budget (read from
its header, before any pixel is decoded); then decoded by OpenCV with the
codecs' own stderr lines suppressed, converted to RGB uint8 and resized.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from resnet_tuner.data.header import image_dimensions, image_format, truncation
from resnet_tuner.data.quiet import quiet_codecs

#: File extensions scanned; the content decides the format (`header.image_format`).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
RESIZE_MODES = ("stretch", "crop", "pad")
#: Images whose header states more pixels than this are skipped unread. That
#: bounds the peak memory of a cold load by `MAX_PIXELS * bytes per pixel *
#: decode threads`: the result alone is 3 bytes a pixel (RGB uint8), and
#: OpenCV's decoders hold a second buffer while decoding, so measured peaks
#: (opencv-python 5.0) are 6 bytes a pixel for 8-bit colour (PNG, and JPEG
#: decoded at full size; most JPEGs are DCT-reduced first and cost 1/4 to
#: 1/64 of that), 4 for grey, 10.5 for RGBA, 18.5 for 16-bit RGBA (alpha is
#: blended in 1 MP strips). 100 MP * 6 B * 2 threads = 1.2 GB on two cores.
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """One image cannot be used; the message is the reason recorded in `skipped`."""


def check_image_size(image_size: Any) -> tuple[int, int]:
    """`(height, width)` from one positive int or a pair of them; raises ValueError otherwise."""
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)
    ):
        raise ValueError(
            "image_size must be a positive integer or a (height, width) pair of them. "
            f"Received: image_size={image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def check_max_pixels(max_pixels: Any) -> int:
    """`max_pixels` as a positive int; raises ValueError otherwise."""
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1:
        raise ValueError(
            f"max_pixels must be a positive integer. Received: max_pixels={max_pixels!r}"
        )
    return max_pixels


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any `IMREAD_UNCHANGED` decode (gray, BGR, BGRA, gray+alpha, 16-bit, float) -> RGB uint8."""
    if image.dtype == np.uint16:
        # Scale the full 16-bit range to 8 bits, rounded (x / 257 is never
        # exactly .5 away); truncating to the low byte would turn smooth
        # gradients into noise.
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
        image = image.astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels in (2, 4):
        # Composite on white: transparent areas of logos and scans are usually paper.
        # In strips of about a megapixel, so the float32 temporaries stay small
        # however large the image.
        blended = np.empty((*image.shape[:2], channels - 1), np.uint8)
        rows = max(1, 2**20 // image.shape[1])
        for top in range(0, image.shape[0], rows):
            strip = image[top : top + rows]
            alpha = strip[:, :, -1:].astype(np.float32) / 255.0
            color = strip[:, :, :-1].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
            blended[top : top + rows] = color + 0.5
        image = blended
        if channels == 2:
            return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    image = np.ascontiguousarray(image[:, :, :3])
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second buffer


def _resize_to(image: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Resizes to `target` (width, height): area-averaging when shrinking, bicubic when enlarging.

    A shrink by less than 2x (most photos after the JPEG DCT reduction, so
    the cold decode's main cost) is bilinear: its 2x2 footprint spans more
    than the input pixel spacing, so every input pixel still contributes and
    nothing aliases, and it is twice as fast as OpenCV's fractional
    INTER_AREA. Shrinks of 2x or more use INTER_AREA, which averages the
    whole footprint where bilinear would skip pixels.
    """
    w, h = image.shape[1], image.shape[0]
    tw, th = target
    if (tw, th) == (w, h):
        return image
    if tw >= w and th >= h:
        return cv2.resize(image, target, interpolation=cv2.INTER_CUBIC)
    if w < 2 * tw and h < 2 * th:
        return cv2.resize(image, target, interpolation=cv2.INTER_LINEAR)
    return cv2.resize(image, target, interpolation=cv2.INTER_AREA)


def resize_image(
    image: np.ndarray, image_size: tuple[int, int], resize: str = "stretch"
) -> np.ndarray:
    """Resizes an RGB image to `image_size` (height, width).

    `stretch` ignores the aspect ratio (what the seed posts do); `crop` keeps it
    and cuts the centre; `pad` keeps it and pads with black (letterbox).
    Shrinking uses area interpolation (no aliasing); enlarging uses bicubic.

    Args:
        image: `(h, w, 3)` uint8.
        image_size: `(height, width)` of the result.
        resize: `"stretch"`, `"crop"` or `"pad"`.

    Returns:
        A contiguous `(height, width, 3)` uint8 array.
    """
    height, width = image_size
    h, w = image.shape[:2]
    if resize == "crop":
        scale = max(height / h, width / w)
    elif resize == "pad":
        scale = min(height / h, width / w)
    else:
        scale = None
    if scale is None:
        target = (width, height)
    else:
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = _resize_to(image, target)
    if resize == "crop":
        top = (out.shape[0] - height) // 2
        left = (out.shape[1] - width) // 2
        out = out[top : top + height, left : left + width]
    elif resize == "pad":
        canvas = np.zeros((height, width, 3), np.uint8)
        top = (height - out.shape[0]) // 2
        left = (width - out.shape[1]) // 2
        canvas[top : top + out.shape[0], left : left + out.shape[1]] = out
        out = canvas
    return np.ascontiguousarray(out)


#: JPEG decode flags for a DCT-domain reduction by 2, 4 or 8, straight to RGB.
_JPEG_REDUCED = {
    factor: (getattr(cv2, f"IMREAD_REDUCED_COLOR_{factor}") & ~cv2.IMREAD_COLOR)
    | cv2.IMREAD_COLOR_RGB
    for factor in (8, 4, 2)
}


def _check_header(data: bytes, min_size: int, max_pixels: int) -> tuple[int, int]:
    """`(width, height)` from the header, or ImageError: empty, cut, unknown, too small or large."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    reason = truncation(data)
    if reason:
        raise ImageError(reason)
    size = image_dimensions(data)
    if size is None or 0 in size:
        raise ImageError("not a decodable image")
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"too large ({width}x{height} px; max_pixels={max_pixels})")
    if min(width, height) < min_size:
        raise ImageError(f"too small ({width}x{height} px; min_size={min_size})")
    return width, height


def decode_image(
    data: bytes,
    image_size: int | tuple[int, int],
    resize: str = "stretch",
    min_size: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decodes an encoded image (the bytes of a file) into RGB uint8 of `image_size`.

    JPEGs are decoded by libjpeg-turbo straight to RGB (grayscale and CMYK
    converted, EXIF orientation applied), and a JPEG at least twice the target
    size is decoded already reduced by 2, 4 or 8 in the DCT domain, which is
    several times faster on camera photos. Other formats are decoded unchanged
    and converted: 16-bit scaled to 8, alpha composited on white, palette and
    grayscale expanded. Accepted formats (by content, not extension): JPEG,
    PNG, BMP, GIF, WebP and TIFF.

    Args:
        data: the encoded bytes.
        image_size: `(height, width)` or one int for a square.
        resize: `"stretch"`, `"crop"` or `"pad"`.
        min_size: smallest usable side in pixels (of the original image).
        max_pixels: largest usable width x height, as the header states it;
            larger images are refused before decoding (see `MAX_PIXELS`).

    Returns:
        A `(height, width, 3)` uint8 array.

    Raises:
        ImageError: the data is empty, truncated, not a decodable image, too
            small or too large; the message says which.
    """
    image_size = check_image_size(image_size)
    width, height = _check_header(data, min_size, check_max_pixels(max_pixels))
    buffer = np.frombuffer(data, np.uint8)
    try:
        with quiet_codecs():
            if image_format(data) == "jpeg":
                # Reduce only while the result still covers the target in any
                # orientation, so the final resize always shrinks (INTER_AREA).
                room = min(width, height) / max(image_size)
                flags = next((f for k, f in _JPEG_REDUCED.items() if room >= k),
                             cv2.IMREAD_COLOR_RGB)
                image = cv2.imdecode(buffer, flags)
            else:
                image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
                if image is not None and image.size:
                    image = _to_rgb_uint8(image)
    except cv2.error as err:  # e.g. a header OpenCV's own size checks reject
        raise ImageError("not a decodable image") from err
    if image is None or image.size == 0:
        raise ImageError("not a decodable image")
    return resize_image(image, image_size, resize)


def load_image(
    path: str | os.PathLike,
    image_size: int | tuple[int, int],
    resize: str = "stretch",
    min_size: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decodes one image file into RGB uint8 of `image_size`, exactly as training saw it.

    Works on any path (non-ASCII names, spaces): the bytes are read in Python
    and decoded by `cv2.imdecode`, never by `cv2.imread`'s path handling.

    Args:
        path: the image file.
        image_size: `(height, width)` or one int for a square.
        resize: `"stretch"`, `"crop"` or `"pad"`.
        min_size: smallest usable side in pixels.
        max_pixels: largest usable width x height (default `MAX_PIXELS`,
            100 megapixels), checked from the file's header before decoding.

    Returns:
        A `(height, width, 3)` uint8 array.

    Raises:
        ImageError: the file is unreadable, empty, truncated, not a decodable
            image, too small or too large; the message says which.

    Example:
        >>> load_image("pets/猫/咪咪.jpg", (128, 128)).shape
        (128, 128, 3)
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise ImageError(f"unreadable ({err.strerror or err})") from err
    return decode_image(data, image_size, resize, min_size, max_pixels)
