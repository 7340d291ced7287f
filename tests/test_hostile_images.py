"""Hostile input (issue 15): a pixel budget read from headers, quiet codecs, a decoder fuzz."""

import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from resnet_tuner.data import (
    MAX_PIXELS,
    ImageError,
    ImageFolder,
    decode_image,
    image_dimensions,
    load_image,
    quiet_codecs,
)
from resnet_tuner.data.quiet import CODEC_LINE

NOISE = np.random.default_rng(0).integers(0, 255, (23, 37, 3)).astype(np.uint8)  # 37 x 23 px
ENCODINGS = {  # every container and sub-format whose header we read
    "jpeg": (".jpg", NOISE, []),
    "png": (".png", NOISE, []),
    "bmp": (".bmp", NOISE, []),
    "gif": (".gif", NOISE, []),
    "tiff": (".tiff", NOISE, []),
    "webp-vp8": (".webp", NOISE, [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "webp-vp8l": (".webp", NOISE, [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "webp-vp8x": (".webp", np.dstack([NOISE, np.full((23, 37), 128, np.uint8)]),
                  [cv2.IMWRITE_WEBP_QUALITY, 80]),
}
if not cv2.haveImageWriter(".gif"):  # OpenCV 4.11's wheels (the oldest supported) have no
    del ENCODINGS["gif"]  # GIF codec: GIFs are skipped there as not decodable


def encode(kind: str) -> bytes:
    ext, image, params = ENCODINGS[kind]
    ok, buffer = cv2.imencode(ext, image, params)
    assert ok
    return buffer.tobytes()


def png_bomb(width: int, height: int) -> bytes:
    """A valid all-black 8-bit grey PNG of `width x height` in about 1 KB per 1,000 x 1,000.

    The zlib stream repeats one raw-deflate block of 64 rows (a full flush
    makes blocks independent), so making it costs nothing; the Adler-32 of n
    zero bytes is `(n % 65521) << 16 | 1`.
    """
    row = bytes(1 + width)  # filter byte 0 + black pixels
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(row * 64) + deflate.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(height, 64)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = deflate.compress(row * rest) + deflate.flush(zlib.Z_FULL_FLUSH) if rest else b""
    n = len(row) * height
    adler32 = struct.pack(">I", (n % 65521) << 16 | 1)
    idat = b"\x78\xda" + block * full + tail + b"\x03\x00" + adler32  # 03 00: empty last block

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- pixel budget


@pytest.mark.parametrize("kind", sorted(ENCODINGS))
def test_header_size_is_read_and_the_budget_applied_for_every_format(kind):
    data = encode(kind)
    assert image_dimensions(data) == (37, 23)
    assert decode_image(data, 8, max_pixels=37 * 23).shape == (8, 8, 3)
    with pytest.raises(ImageError, match=r"^too large \(37x23 px; max_pixels=850\)$"):
        decode_image(data, 8, max_pixels=37 * 23 - 1)


def test_header_variants_without_an_encoder_here():
    bmp = bytearray(encode("bmp"))
    bmp[22:26] = struct.pack("<i", -23)  # top-down rows
    assert image_dimensions(bytes(bmp)) == (37, 23)
    os2 = b"BM" + bytes(12) + struct.pack("<IHHHH", 12, 37, 23, 1, 24) + bytes(8)
    assert image_dimensions(os2) == (37, 23)
    entries = struct.pack("<HHQQ", 256, 4, 1, 37) + struct.pack("<HHQQ", 257, 16, 1, 23)
    bigtiff = b"II+\0" + struct.pack("<HHQQ", 8, 0, 16, 2) + entries
    assert image_dimensions(bigtiff) == (37, 23)
    entries = struct.pack(">HHIHH", 256, 3, 1, 37, 0) + struct.pack(">HHII", 257, 4, 1, 23)
    motorola = b"MM\0*" + struct.pack(">IH", 8, 2) + entries  # big-endian TIFF
    assert image_dimensions(motorola) == (37, 23)
    assert image_dimensions(b"P6\n37 23\n255\n") is None  # not a format we accept
    assert image_dimensions(b"\x89PNG\r\n\x1a\n\0\0") is None  # header cut short


def test_headers_opencv_itself_rejects_are_skipped_not_raised():
    # 50 x 1,100,000 px is within the budget, but over OpenCV's own side limit
    # (2^20), which it enforces by raising cv2.error rather than returning None.
    bmp = bytearray(encode("bmp"))
    bmp[18:26] = struct.pack("<ii", 50, 1_100_000)
    with pytest.raises(cv2.error):
        cv2.imdecode(np.frombuffer(bytes(bmp), np.uint8), cv2.IMREAD_UNCHANGED)
    with pytest.raises(ImageError, match="^not a decodable image$"):
        decode_image(bytes(bmp), 8)


def test_png_chunk_length_past_the_file_is_refused_before_opencv_allocates_it():
    png = bytearray(encode("png"))
    idat = png.index(b"IDAT") - 4
    png[idat : idat + 4] = struct.pack(">I", 3_767_798_299)  # what the long fuzz found
    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"^truncated \(PNG chunk longer than the rest"):
        decode_image(bytes(png), 8)
    assert time.perf_counter() - start < 0.5  # OpenCV took 7.8 s and 3.6 GB on it


def test_png_bomb_is_refused_unread_by_load_image(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(30000, 30000))
    assert path.stat().st_size < 1_000_000 and image_dimensions(path.read_bytes()) == (30000, 30000)
    with pytest.raises(ImageError) as caught:
        load_image(path, 32)
    assert str(caught.value) == f"too large (30000x30000 px; max_pixels={MAX_PIXELS})"
    assert "\n" not in str(caught.value)
    # The bomb is a real image: under a budget that admits it, it decodes (black).
    small = tmp_path / "small_bomb.png"
    small.write_bytes(png_bomb(300, 200))
    assert load_image(small, 8).max() == 0


#: Peak resident memory of this process in KB. VmHWM, not getrusage's
#: ru_maxrss: a child's ru_maxrss starts at its forking parent's (pytest, with
#: TensorFlow loaded), which would hide the growth measured here.
_PEAK_KB = """
def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
"""

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                reason="reads peak memory from /proc (Linux)")

_RSS_CHILD = _PEAK_KB + r"""
import json, sys, warnings
import sklearn.model_selection  # imported by the split; not part of the load's growth
from resnet_tuner.data import ImageFolder
before = peak_kb()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    data = ImageFolder(sys.argv[1], image_size=16, split=(0.5, 0.25, 0.25), cache_dir=False,
                       verbose=0)
after = peak_kb()
print(json.dumps({"growth_kb": after - before, "before_kb": before, "skipped": data.skipped,
                  "kept": sum(len(data.labels(s)) for s in ("train", "val", "test"))}))
"""

#: Peak RSS growth allowed for loading the folder with the bomb. Decoding the
#: bomb would take 900 MB (grey) + 2.7 GB (RGB); before the pixel budget this
#: load peaked at 3.5 GB.
BOMB_RSS_BOUND_MB = 100


@needs_proc
def test_bomb_among_small_images_is_skipped_and_memory_stays_flat(tmp_path, make_folder):
    root = make_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=8, ext=".png")
    (root / "cat" / "bomb.png").write_bytes(png_bomb(30000, 30000))
    child = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(root)], capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    result = json.loads(child.stdout)
    assert result["skipped"] == [[str(root / "cat" / "bomb.png"),
                                  "too large (30000x30000 px; max_pixels=100000000)"]]
    assert result["kept"] == 16
    assert result["growth_kb"] < BOMB_RSS_BOUND_MB * 1024, result


def test_max_pixels_is_checked_and_part_of_the_cache_key(tmp_path, make_folder):
    root = make_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=5, ext=".png")
    with pytest.raises(ValueError, match=r"max_pixels must be a positive integer. Received: "
                                         r"max_pixels=0"):
        ImageFolder(root, image_size=8, max_pixels=0, verbose=0)
    cache = tmp_path / "cache"
    roomy = ImageFolder(root, image_size=8, split=(0.6, 0.2, 0.2), cache_dir=cache, verbose=0)
    assert roomy.skipped == []
    assert roomy.manifest()["max_pixels"] == MAX_PIXELS
    # The same folder and cache under a budget below every image (24 x 20): nothing is
    # reused from the roomy load's cache, every image is refused.
    with pytest.raises(ValueError, match=r"\['cat', 'dog'\] contain no usable images"):
        ImageFolder(root, image_size=8, split=(0.6, 0.2, 0.2), cache_dir=cache, verbose=0,
                    max_pixels=24 * 20 - 1)


# --------------------------------------------------------------------------- quiet codecs


def png_with_bad_idat() -> bytes:
    """A PNG whose compressed data is damaged (chunk CRC fixed): libpng errors on it."""
    data = bytearray(encode("png"))
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    for pos in range(start + 10, start + length - 4, 7):
        data[pos] ^= 0x5A
    data[start + length : start + length + 4] = struct.pack(
        ">I", zlib.crc32(bytes(data[start - 4 : start + length])))
    return bytes(data)


def jpeg_with_extraneous_bytes() -> bytes:
    """A whole JPEG with a stray RST marker in its scan: libjpeg warns, then decodes it."""
    data = encode("jpeg")
    inside_scan = data.index(b"\xff\xda") + 40
    return data[:inside_scan] + b"\xff\xd3" + data[inside_scan:]


def test_codec_lines_never_reach_stderr_and_bad_files_are_skipped_once(tmp_path, capfd,
                                                                      make_folder):
    bad_png, noisy_jpeg = png_with_bad_idat(), jpeg_with_extraneous_bytes()
    # The fixtures do make the codecs talk (else this test could not fail).
    for data in (bad_png, noisy_jpeg):
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    raw = capfd.readouterr().err
    assert "libpng error" in raw and "Corrupt JPEG data" in raw
    root = make_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=6)
    for i in range(3):
        (root / "cat" / f"bad {i}.png").write_bytes(bad_png)
        (root / "dog" / f"noisy {i}.jpg").write_bytes(noisy_jpeg)
    with pytest.warns(UserWarning, match=r"Skipped 3 file\(s\)"):
        data = ImageFolder(root, image_size=16, split=(0.5, 0.25, 0.25), cache_dir=False,
                           verbose=0)
    assert capfd.readouterr().err == ""
    assert sorted(data.skipped) == [(str(root / "cat" / f"bad {i}.png"), "not a decodable image")
                                    for i in range(3)]
    kept = [f for s in ("train", "val", "test") for f in data.split_files(s)]
    assert sum("noisy" in f for f in kept) == 3  # damaged but decodable: kept


def test_quiet_window_forwards_everything_but_codec_lines(capfd):
    before = os.fstat(2)
    with quiet_codecs():
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\n")
        os.write(2, b"someone else's line\n")
        with quiet_codecs():  # re-entrant
            os.write(2, b"libpng error: IDAT: incorrect data check\n")
            # Two threads' messages interleaved: libjpeg writes the newline separately.
            for part in (b"Corrupt JPEG data: bad Huffman code", b"libpng error: x", b"\n", b"\n"):
                os.write(2, part)
        sys.stderr.write("a Python warning\n")
        sys.stderr.write("\rprogress 1/2")
        sys.stderr.write("\rprogress 2/2\n")
    err = capfd.readouterr().err
    # (capfd takes sys.stderr's writes straight to its file, so the order of
    # Python's and fd 2's lines is pytest's, not ours.)
    assert sorted(err.split("\n")) == sorted(
        ["someone else's line", "a Python warning", "\rprogress 1/2\rprogress 2/2", ""])
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # fd 2 restored


def test_quiet_window_is_thread_safe(capfd):
    bad_png, noisy_jpeg = png_with_bad_idat(), jpeg_with_extraneous_bytes()
    errors = []

    def decode_many():
        for _ in range(25):
            decode_image(noisy_jpeg, 8)  # a libjpeg warning per call, from 4 threads at once
            try:
                decode_image(bad_png, 8)
            except ImageError as err:
                errors.append(str(err))

    threads = [threading.Thread(target=decode_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == ["not a decodable image"] * 100
    os.write(2, b"after\n")  # fd 2 is the real stderr again
    assert capfd.readouterr().err == "after\n"
    assert CODEC_LINE.match(b"[ WARN:0@0.1] global grfmt_png.cpp:1 readHeader x\n")


# --------------------------------------------------------------------------- mutation fuzz

_FUZZ_CHILD = _PEAK_KB + r"""
import json, os, sys, time, warnings
from resnet_tuner.data import ImageError, ImageFolder, decode_image
root = sys.argv[1]
outcomes, slowest = {}, 0.0
for folder, _, names in os.walk(root):
    for name in names:
        path = os.path.join(folder, name)
        data = open(path, "rb").read()
        start = time.perf_counter()
        try:
            decode_image(data, 16, min_size=8)
            outcomes[path] = None
        except ImageError as err:
            outcomes[path] = str(err)
        slowest = max(slowest, time.perf_counter() - start)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    data = ImageFolder(root, image_size=16, split=(0.5, 0.25, 0.25), cache_dir=False, verbose=0)
kept = [os.path.join(data.root, f) for s in ("train", "val", "test") for f in data.split_files(s)]
peak_mb = peak_kb() / 1024
print(json.dumps({"outcomes": outcomes, "slowest": slowest, "kept": kept,
                  "skipped": data.skipped, "peak_mb": peak_mb}))
"""

#: Reasons a damaged file may be skipped for; anything else is a bug.
FUZZ_REASONS = ("not a decodable image", "truncated (", "too large (", "too small (",
                "empty file")


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of: random byte changes, changes in the header, a truncation, or both."""
    data = bytearray(data)
    mode = rng.choice(("flip", "header", "truncate", "flip+truncate"))
    if mode in ("flip", "flip+truncate"):
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    if mode == "header":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    if mode in ("truncate", "flip+truncate"):
        data = data[: rng.randrange(len(data))]
    return bytes(data)


def run_fuzz(root: Path, per_format: int, seed: int, timeout: float) -> dict:
    """Writes good files and `per_format` mutants of each encoding, loads them in a child."""
    rng = random.Random(seed)
    for c, name in enumerate(("a", "b")):
        for i in range(8):
            (root / name).mkdir(parents=True, exist_ok=True)
            good = np.full((20, 24, 3), 100 * c + i, np.uint8)
            (root / name / f"good {i}.png").write_bytes(cv2.imencode(".png", good)[1].tobytes())
    bases = {kind: encode(kind) for kind in ENCODINGS}
    for kind, data in bases.items():
        ext = ENCODINGS[kind][0]
        for i in range(per_format):
            path = root / rng.choice("ab") / f"fuzz {kind} {i}{ext}"
            path.write_bytes(mutate(data, rng))
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", _FUZZ_CHILD, str(root)], capture_output=True,
                           text=True, timeout=timeout)  # a hang fails here
    assert child.returncode == 0, child.stderr[-2000:]  # a crash (e.g. SIGSEGV) fails here
    assert child.stderr == "", child.stderr[-2000:]  # no codec line, no traceback
    result = json.loads(child.stdout)
    result["seconds"] = time.perf_counter() - start
    return result


def check_fuzz(result: dict, expected_files: int) -> dict:
    outcomes = result["outcomes"]
    assert len(outcomes) == expected_files
    assert result["slowest"] < 2.0, f"a decode took {result['slowest']:.2f} s"
    # Headers may legally claim up to MAX_PIXELS: 300 MB per decode thread; a
    # flipped PNG chunk length once made OpenCV allocate 3.7 GB.
    assert result["peak_mb"] < 1500, f"peak RSS {result['peak_mb']:.0f} MB"
    skipped = dict(map(tuple, result["skipped"]))
    for path, reason in outcomes.items():
        if "good" in path:
            assert reason is None, (path, reason)
        if reason is None:
            assert path in result["kept"], path  # decodable: used
        else:
            assert reason.startswith(FUZZ_REASONS), (path, reason)
            assert skipped[path] == reason  # skipped once, with the same reason
    assert len(result["skipped"]) == len(skipped) == sum(r is not None for r in outcomes.values())
    counts = {"files": len(outcomes), "decoded": sum(r is None for r in outcomes.values()),
              "peak_mb": round(result["peak_mb"]), "slowest_s": round(result["slowest"], 2)}
    for reason in outcomes.values():
        if reason is not None:
            key = reason.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
    return counts


@needs_proc
def test_mutation_fuzz_of_the_decoders(tmp_path):
    result = run_fuzz(tmp_path / "fuzz", per_format=40, seed=15, timeout=120)
    counts = check_fuzz(result, expected_files=16 + 40 * len(ENCODINGS))
    print(f"fuzz counts: {counts}, {result['seconds']:.1f} s")
    assert counts["decoded"] > 16 and counts["not a decodable image"] > 0  # both paths ran


@needs_proc
@pytest.mark.slow
def test_mutation_fuzz_of_the_decoders_long(tmp_path):
    result = run_fuzz(tmp_path / "fuzz", per_format=1000, seed=1015, timeout=1800)
    counts = check_fuzz(result, expected_files=16 + 1000 * len(ENCODINGS))
    print(f"fuzz counts: {counts}, {result['seconds']:.1f} s")
