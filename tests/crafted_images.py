"""Crafted encoded images, built byte by byte: headers that a second parser might read otherwise than the decoder
(TIFF tags of every integer type and duplicated, PNM comments and HDR header lines of any length) and the bombs of
issue 21 (declaring 20000×20000 where a careless reader sees 100×100 or nothing, a progressive JPEG of hundreds of
scans). Used by tests/test_decode_bounds.py."""

from __future__ import annotations

import struct

import numpy as np

# TIFF field types: struct code, size.
TIFF_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}
BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG, LONG8, SLONG8 = 1, 3, 4, 6, 8, 9, 16, 17
RATIONAL = 5


def tiff(width: int, height: int, dims: list[tuple[int, int, int]] | None = None, big_endian: bool = False,
         pixels: bytes | None = None) -> bytes:
    """An uncompressed 8-bit grey TIFF of one strip. ``dims``: the ImageWidth (256) / ImageLength (257) entries as
    (tag, type, value), in directory order (duplicates allowed); default one LONG each. ``pixels``: the strip (default
    ``width × height`` bytes)."""
    e = ">" if big_endian else "<"
    pixels = bytes((x * 37 + 11) % 256 for x in range(width * height)) if pixels is None else pixels
    dims = [(256, LONG, width), (257, LONG, height)] if dims is None else dims
    entries = [*dims, (258, SHORT, 8), (259, SHORT, 1), (262, SHORT, 1), (273, LONG, 0), (277, SHORT, 1),
               (278, LONG, height), (279, LONG, len(pixels))]
    ifd = 8
    extra_at = ifd + 2 + 12 * len(entries) + 4  # values over 4 bytes, then the strip
    strip_at = extra_at + sum(8 for _, kind, _ in entries if struct.calcsize(TIFF_TYPES[kind]) > 4)
    extra = fields = b""
    for tag, kind, value in entries:
        code = TIFF_TYPES[kind]
        raw = struct.pack(e + code, strip_at if tag == 273 else value)
        if len(raw) > 4:
            fields += struct.pack(e + "HHII", tag, kind, 1, extra_at + len(extra))
            extra += raw
        else:
            fields += struct.pack(e + "HHI", tag, kind, 1) + raw.ljust(4, b"\0")
    head = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(e + "I", ifd)
    return head + struct.pack(e + "H", len(entries)) + fields + b"\0\0\0\0" + extra + pixels


def pnm(kind: bytes, width: int, height: int, gaps: list[bytes]) -> bytes:
    """P1–P6 with ``gaps`` (whitespace and comments) before width, height and maxval, and pixel data to match."""
    plain, bits = kind in (b"P1", b"P2", b"P3"), kind in (b"P1", b"P4")
    channels = 3 if kind in (b"P3", b"P6") else 1
    head = kind + gaps[0] + str(width).encode() + gaps[1] + str(height).encode()
    if not bits:
        head += gaps[2] + b"255"
    head += b"\n"
    n = width * height * channels
    if plain:
        return head + b" ".join(b"1" if bits else b"7" for _ in range(n)) + b"\n"
    return head + (b"\x55" * (height * ((width + 7) // 8)) if bits else b"\x80" * n)


def hdr(width: int, height: int, lines: list[bytes], size_line: bytes | None = None) -> bytes:
    """Radiance HDR: ``#?RADIANCE``, ``lines``, the FORMAT line, an empty line, the size line, then flat RGBE
    pixels (a width under 8 is stored flat, not run-length encoded)."""
    size_line = size_line or b"-Y %d +X %d" % (height, width)
    return (b"#?RADIANCE\n" + b"".join(ln + b"\n" for ln in lines) + b"FORMAT=32-bit_rle_rgbe\n\n" + size_line +
            b"\n" + b"\x80\x40\x20\x81" * (width * height))


def jpeg_segments(data: bytes) -> list[bytes]:
    """A JPEG split into its segments (a scan's segment includes its entropy-coded data), SOI and EOI included."""
    out, pos = [data[:2]], 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append(data[pos : pos + 2])
            break
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append(data[pos:end])
        pos = end
    return out


def progressive_jpeg(width: int, height: int, scans: int, flat: bool = False) -> bytes:
    """A progressive JPEG of ``scans`` scans: OpenCV's own progressive encoding, its last AC scan repeated (libjpeg
    decodes the repetition, with a warning on the progression, and it costs a pass over the image each time).
    ``flat``: one grey, so that each repeated scan is a few bytes however large the image."""
    import cv2

    y, x = np.mgrid[:height, :width]
    img = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], -1).astype(np.uint8)
    if flat:
        img = np.full((height, width, 3), 128, np.uint8)
    _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    segments = jpeg_segments(buf.tobytes())
    sos = [i for i, s in enumerate(segments) if s[1] == 0xDA]
    last = sos[-1]
    # the last scan with the tables (DHT) that precede it
    block = b"".join(segments[sos[-2] + 1 : last + 1])
    extra = scans - len(sos)
    return b"".join(segments[: last + 1]) + block * extra + b"".join(segments[last + 1 :])


def tiff_bomb_duplicate() -> bytes:
    """20000×20000 in the first ImageWidth / ImageLength entries (what libtiff reads), 100×100 in later ones."""
    return tiff(100, 100, dims=[(256, LONG, 20000), (257, LONG, 20000), (256, LONG, 100), (257, LONG, 100)])


def tiff_bomb_slong() -> bytes:
    """20000×20000 as SLONG values."""
    return tiff(100, 100, dims=[(256, SLONG, 20000), (257, SLONG, 20000)])


def pbm_bomb(comment: int = 4000) -> bytes:
    """A 20000×20000 bitmap whose size follows a comment longer than a fixed-size look at the header."""
    return b"P4\n#" + b"x" * comment + b"\n20000 20000\n" + b"\x00" * 4096


def hdr_bomb(lines: int = 1000) -> bytes:
    """A 20000×20000 Radiance HDR whose size line follows a header of ``lines`` lines (about 20 KB)."""
    return (b"#?RADIANCE\n" + b"COMMENT=padding the header\n" * lines + b"FORMAT=32-bit_rle_rgbe\n\n"
            b"-Y 20000 +X 20000\n" + b"\x02\x02\x4e\x20" + b"\x00" * 4096)
