"""Awkward and broken test images, generated on the fly (nothing large is committed).

Every maker returns encoded bytes; ``write_all`` puts a named set of them in a directory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
PHOTOS = sorted(DATA.glob("*.jpg"))


def _photo_rgb(name: str = "chelsea", size: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image

    im = Image.open(DATA / f"{name}.jpg").convert("RGB")
    if size is not None:
        im = im.resize(size, Image.BILINEAR)
    return np.asarray(im)


def _pil_bytes(arr_or_image, fmt: str, mode: str | None = None, **kw) -> bytes:
    from PIL import Image

    im = arr_or_image if isinstance(arr_or_image, Image.Image) else Image.fromarray(arr_or_image, mode)
    bio = io.BytesIO()
    im.save(bio, fmt, **kw)
    return bio.getvalue()


def _cv2_bytes(arr: np.ndarray, ext: str, params: tuple = ()) -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, arr, list(params))
    assert ok
    return buf.tobytes()


def grayscale_png() -> bytes:
    from PIL import Image

    return _pil_bytes(Image.fromarray(_photo_rgb("coffee")).convert("L"), "PNG")


def grayscale_jpeg() -> bytes:
    from PIL import Image

    return _pil_bytes(Image.fromarray(_photo_rgb("astronaut")).convert("L"), "JPEG", quality=90)


def rgba_png() -> bytes:
    rgb = _photo_rgb("chelsea")
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))  # a ramp: alpha must be dropped
    return _pil_bytes(np.dstack([rgb, alpha]), "PNG", "RGBA")


def png16() -> bytes:
    """A 16-bit colour PNG whose low bytes are noise: the decode keeps the high byte."""
    rgb = _photo_rgb("rocket").astype(np.uint16)
    rng = np.random.default_rng(1)
    bgr16 = (rgb[:, :, ::-1] << 8) | rng.integers(0, 256, rgb.shape, dtype=np.uint16)
    return _cv2_bytes(np.ascontiguousarray(bgr16), ".png")


def gray16_png() -> bytes:
    g = (_photo_rgb("coffee").mean(axis=2) * 257).astype(np.uint16)
    return _cv2_bytes(g, ".png")


def cmyk_jpeg() -> bytes:
    from PIL import Image

    return _pil_bytes(Image.fromarray(_photo_rgb("coffee")).convert("CMYK"), "JPEG", quality=92)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """A JPEG whose pixels are stored sideways with an EXIF orientation tag that puts them upright."""
    from PIL import Image

    im = Image.fromarray(_photo_rgb("rocket"))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _pil_bytes(im, "JPEG", exif=exif.tobytes(), quality=92)


def progressive_jpeg() -> bytes:
    return _pil_bytes(_photo_rgb("astronaut"), "JPEG", quality=90, progressive=True, optimize=True)


def restart_marker_jpeg() -> bytes:
    import cv2

    return _cv2_bytes(_photo_rgb("coffee")[:, :, ::-1].copy(), ".jpg", (cv2.IMWRITE_JPEG_RST_INTERVAL, 4))


def jpeg_with_trailing_data() -> bytes:
    """Like a phone's motion photo: a complete JPEG followed by other bytes (here random ones)."""
    rng = np.random.default_rng(2)
    return (DATA / "rocket.jpg").read_bytes() + rng.integers(0, 256, 20000, dtype=np.uint8).tobytes()


def webp() -> bytes:
    return _pil_bytes(_photo_rgb("chelsea"), "WEBP", quality=90)


def bmp() -> bytes:
    return _pil_bytes(_photo_rgb("astronaut", (300, 260)), "BMP")


def palette_png() -> bytes:
    from PIL import Image

    return _pil_bytes(Image.fromarray(_photo_rgb("chelsea")).convert("P"), "PNG")


def huge_jpeg(side: int = 6000) -> bytes:
    """side×side, smooth with some texture so the resize has real work (a few MB as JPEG)."""
    import cv2

    ramp = np.linspace(0, 255, side, dtype=np.float32)
    img = np.empty((side, side, 3), np.uint8)
    img[:, :, 0] = ramp[None, :].astype(np.uint8)
    img[:, :, 1] = ramp[:, None].astype(np.uint8)
    img[:, :, 2] = (127 + 127 * np.sin(ramp[:, None] / 9.0) * np.cos(ramp[None, :] / 7.0)).astype(np.uint8)
    texture = np.random.default_rng(3).integers(0, 40, (side // 16, side // 16, 3), dtype=np.uint8)
    img = cv2.add(img, cv2.resize(texture, (side, side), interpolation=cv2.INTER_NEAREST))
    return _cv2_bytes(img, ".jpg", (1, 85))  # cv2.IMWRITE_JPEG_QUALITY == 1


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    rng = np.random.default_rng(width * 100 + height)
    return _cv2_bytes(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), ".png")


# ----------------------------------------------------------------------------------------- broken inputs


def truncated_jpeg() -> bytes:
    data = (DATA / "coffee.jpg").read_bytes()
    return data[: len(data) * 2 // 3]


def truncated_png() -> bytes:
    data = _cv2_bytes(_photo_rgb("chelsea")[:, :, ::-1].copy(), ".png")
    return data[: len(data) // 2]


def empty() -> bytes:
    return b""


def text() -> bytes:
    return b"this is a text file, not an image\n" * 10


def random_bytes() -> bytes:
    return np.random.default_rng(4).integers(0, 256, 4096, dtype=np.uint8).tobytes()


# ----------------------------------------------------------------------------------------- hostile inputs


def _zlib_zeros(chunks: int, chunk_len: int) -> bytes:
    """zlib data of chunks × chunk_len zero bytes, without compressing them all: one chunk compressed and ended by
    a full flush (no reference back) is repeated, then a final empty block and the Adler-32 (of zeros: a = 1,
    b = the count modulo 65521)."""
    import struct
    import zlib

    c = zlib.compressobj(9)
    first = c.compress(b"\0" * chunk_len) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(b"\0" * chunk_len) + c.flush(zlib.Z_FULL_FLUSH)
    total = chunks * chunk_len
    return first + again * (chunks - 1) + b"\x03\x00" + struct.pack(">I", ((total % 65521) << 16) | 1)


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid black RGB PNG of width × height (20000×20000: 400 MP, 1.2 GB decoded, 1.17 MB encoded), made in
    milliseconds. ``height`` must be a multiple of 100."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    idat = _zlib_zeros(height // 100, 100 * (1 + 3 * width))  # each row: filter byte 0, then the pixels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def oversized_jpeg(total_bytes: int = 60_000_000) -> bytes:
    """A real photograph followed by zeros up to ``total_bytes``: a request over the byte limit."""
    data = (DATA / "coffee.jpg").read_bytes()
    return data + b"\0" * (total_bytes - len(data))


AWKWARD = {
    "gray.png": grayscale_png,
    "gray.jpg": grayscale_jpeg,
    "rgba.png": rgba_png,
    "rgb16.png": png16,
    "gray16.png": gray16_png,
    "cmyk.jpg": cmyk_jpeg,
    "exif6.jpg": lambda: exif_rotated_jpeg(6),
    "exif3.jpg": lambda: exif_rotated_jpeg(3),
    "exif8.jpg": lambda: exif_rotated_jpeg(8),
    "progressive.jpg": progressive_jpeg,
    "restart.jpg": restart_marker_jpeg,
    "trailing.jpg": jpeg_with_trailing_data,
    "palette.png": palette_png,
    "chelsea.webp": webp,
    "astronaut.bmp": bmp,
    "tiny3x2.png": lambda: tiny_png(3, 2),
    "tiny2x3.png": lambda: tiny_png(2, 3),
    "tiny1x1.png": lambda: tiny_png(1, 1),
}

BROKEN = {
    "truncated.jpg": truncated_jpeg,
    "truncated.png": truncated_png,
    "empty.jpg": empty,
    "text.png": text,
    "random.jpg": random_bytes,
}


def write_all(directory: Path, makers: dict) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in makers.items():
        p = directory / name
        p.write_bytes(make())
        paths.append(p)
    return paths
