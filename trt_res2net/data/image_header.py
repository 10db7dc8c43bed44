"""How large an encoded image says it is, read from its header before anything is decoded.

``image_size(data)`` gives ``(format, width, height)`` as the header declares them — what the decoder will
allocate — for every format the OpenCV builds this project uses decode: JPEG (the frame header, SOF), PNG (IHDR),
BMP, WebP (VP8, VP8L, VP8X), GIF, TIFF and BigTIFF (the first IFD: the page ``imdecode`` reads), JPEG 2000 (JP2's
``ihdr`` or the codestream's SIZ), PNM/PAM/PFM, Sun raster, Radiance HDR, AVIF/HEIF (``ispe``) and OpenEXR
(``dataWindow``). ``None`` when the data is in none of these formats or its header is cut short (the decoder then
judges it). Reading is a few slices of the first bytes (a JPEG's segments are skipped by their lengths), so a
refusal costs microseconds however large the image claims to be. Only the standard library: the Triton
preprocessing model runs a copy of this file (``trt_res2net_vendored/data/``).
"""

from __future__ import annotations

import re

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # not C4 (DHT), C8, CC


def _u16(b, pos: int, big: bool = True) -> int:
    return int.from_bytes(b[pos : pos + 2], "big" if big else "little")


def _u32(b, pos: int, big: bool = True) -> int:
    return int.from_bytes(b[pos : pos + 4], "big" if big else "little")


def _jpeg(b) -> tuple[int, int] | None:
    """The first frame header's dimensions. Bytes between segments are skipped the way libjpeg skips them (to
    the next 0xFF that starts a marker), so garbage cannot hide a frame header that the decoder would find."""
    n, pos = len(b), 2
    while pos + 4 <= n:
        if b[pos] != 0xFF:
            pos = b.find(b"\xff", pos)
            if pos < 0:
                return None
            continue
        marker = b[pos + 1]
        if marker == 0xFF:
            pos += 1
        elif marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:
            pos += 2
        elif marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            return None
        elif marker in _SOF:
            if pos + 9 > n:
                return None
            height, width = _u16(b, pos + 5), _u16(b, pos + 7)
            return (width, height) if height else None  # height 0 (DNL): libjpeg refuses it
        else:
            pos += 2 + _u16(b, pos + 2)
    return None


def _bmp(b) -> tuple[int, int] | None:
    if len(b) < 26:
        return None
    if _u32(b, 14, False) == 12:  # OS/2 BITMAPCOREHEADER: 16-bit dimensions
        return _u16(b, 18, False), _u16(b, 20, False)
    width = int.from_bytes(b[18:22], "little", signed=True)
    height = int.from_bytes(b[22:26], "little", signed=True)  # negative: stored top-down
    return abs(width), abs(height)


def _webp(b) -> tuple[int, int] | None:
    chunk = bytes(b[12:16])
    if chunk == b"VP8X" and len(b) >= 30:
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    if chunk == b"VP8L" and len(b) >= 25 and b[20] == 0x2F:
        bits = _u32(b, 21, False)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(b) >= 30 and bytes(b[23:26]) == b"\x9d\x01\x2a":
        return _u16(b, 26, False) & 0x3FFF, _u16(b, 28, False) & 0x3FFF
    return None


def _tiff(b) -> tuple[int, int] | None:
    big = bytes(b[:2]) == b"MM"
    bigtiff = _u16(b, 2, big) == 43
    if bigtiff:
        ifd, count_size, entry_size, value_at = int.from_bytes(b[8:16], "big" if big else "little"), 8, 20, 12
    else:
        ifd, count_size, entry_size, value_at = _u32(b, 4, big), 2, 12, 8
    if ifd + count_size > len(b):
        return None
    count = int.from_bytes(b[ifd : ifd + count_size], "big" if big else "little")
    dims: dict[int, int] = {}
    for i in range(min(count, 4096)):
        entry = ifd + count_size + i * entry_size
        if entry + entry_size > len(b):
            break
        tag, kind = _u16(b, entry, big), _u16(b, entry + 2, big)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8
            size = {3: 2, 4: 4, 16: 8}.get(kind)
            if size is not None:
                dims[tag] = int.from_bytes(b[entry + value_at : entry + value_at + size], "big" if big else "little")
    return (dims[256], dims[257]) if len(dims) == 2 else None


def _jp2(b) -> tuple[int, int] | None:
    """JP2 boxes: ``jp2h`` holds ``ihdr`` (height, width)."""
    pos, end = 0, len(b)
    while pos + 8 <= end:
        size, kind = _u32(b, pos), bytes(b[pos + 4 : pos + 8])
        header = 8
        if size == 1:
            size, header = int.from_bytes(b[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = end - pos
        if size < header:
            return None
        if kind == b"jp2h":
            end, pos = min(end, pos + size), pos + header  # look inside
            continue
        if kind == b"ihdr" and pos + 16 <= len(b):
            return _u32(b, pos + 12), _u32(b, pos + 8)
        pos += size
    return None


def _j2k(b) -> tuple[int, int] | None:
    if len(b) < 24 or bytes(b[2:4]) != b"\xff\x51":  # SIZ follows SOC
        return None
    return _u32(b, 8) - _u32(b, 16), _u32(b, 12) - _u32(b, 20)


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\S+)")


def _pnm(b) -> tuple[int, int] | None:
    head = bytes(b[:1024])
    if head[:2] == b"P7":  # PAM: WIDTH and HEIGHT lines up to ENDHDR
        fields = dict(re.findall(rb"^(WIDTH|HEIGHT)\s+(\d+)", head, flags=re.M))
        return (int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])) if len(fields) == 2 else None
    tokens, pos = [], 2
    while len(tokens) < 2:
        m = _PNM_TOKEN.match(head, pos)
        if m is None or not m.group(1).isdigit():
            return None
        tokens.append(int(m.group(1)))
        pos = m.end()
    return tokens[0], tokens[1]


def _hdr(b) -> tuple[int, int] | None:
    """Radiance: header lines, an empty line, then e.g. ``-Y 512 +X 768`` (rows first)."""
    head = bytes(b[:8192])
    end = head.find(b"\n\n")
    if end < 0:
        return None
    m = re.match(rb"\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)", head[end + 2 :])
    if m is None:
        return None
    first, second = int(m.group(3)), int(m.group(6))
    return (second, first) if m.group(2) == b"Y" else (first, second)


def _isobmff(b) -> tuple[int, int] | None:
    """AVIF / HEIF: the largest ``ispe`` (image spatial extents) property inside the top-level ``meta`` box."""
    pos, n = 0, len(b)
    while pos + 8 <= n:
        size, kind = _u32(b, pos), bytes(b[pos + 4 : pos + 8])
        header = 8
        if size == 1:
            size, header = int.from_bytes(b[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = n - pos
        if size < header:
            return None
        if kind == b"meta":
            meta = bytes(b[pos : min(n, pos + size)])
            best = None
            for m in re.finditer(rb"ispe", meta):
                i = m.start()
                if i >= 4 and _u32(meta, i - 4) >= 20 and i + 16 <= len(meta):
                    dims = (_u32(meta, i + 8), _u32(meta, i + 12))
                    if best is None or dims[0] * dims[1] > best[0] * best[1]:
                        best = dims
            return best
        pos += size
    return None


def _exr(b) -> tuple[int, int] | None:
    """OpenEXR: header attributes ``name\\0type\\0size value`` up to an empty name; ``dataWindow`` is a box2i."""
    pos, n = 8, min(len(b), 1 << 16)
    while pos < n and b[pos] != 0:
        name_end = b.find(b"\x00", pos, n)
        type_end = b.find(b"\x00", name_end + 1, n) if name_end >= 0 else -1
        if type_end < 0 or type_end + 5 > n:
            return None
        size = _u32(b, type_end + 1, False)
        value = type_end + 5
        if bytes(b[pos:name_end]) == b"dataWindow" and size == 16 and value + 16 <= n:
            x0, y0, x1, y1 = (int.from_bytes(b[value + 4 * i : value + 4 * i + 4], "little", signed=True)
                              for i in range(4))
            return x1 - x0 + 1, y1 - y0 + 1
        pos = value + size
    return None


def image_size(data) -> tuple[str, int, int] | None:
    """``(format, width, height)`` declared by an encoded image's header, or None (another format, or cut short)."""
    b = data if isinstance(data, (bytes, bytearray)) else bytes(memoryview(data))
    head = bytes(b[:16])
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        dims, name = (_u32(b, 16), _u32(b, 20)) if len(b) >= 24 and bytes(b[12:16]) == b"IHDR" else None, "PNG"
    elif head[:3] == b"\xff\xd8\xff":
        dims, name = _jpeg(b), "JPEG"
    elif head[:2] == b"BM":
        dims, name = _bmp(b), "BMP"
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        dims, name = _webp(b), "WebP"
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        dims, name = ((_u16(b, 6, False), _u16(b, 8, False)) if len(b) >= 10 else None), "GIF"
    elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        dims, name = _tiff(b), "TIFF"
    elif head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":
        dims, name = _jp2(b), "JPEG 2000"
    elif head[:2] == b"\xff\x4f":
        dims, name = _j2k(b), "JPEG 2000"
    elif head[:1] == b"P" and head[1:2] in b"1234567fF" and len(head) > 2:
        dims, name = _pnm(b), "PNM"
    elif head[:4] == b"\x59\xa6\x6a\x95":
        dims, name = ((_u32(b, 4), _u32(b, 8)) if len(b) >= 12 else None), "Sun raster"
    elif head[:2] == b"#?":
        dims, name = _hdr(b), "Radiance HDR"
    elif head[4:8] == b"ftyp":
        dims, name = _isobmff(b), "AVIF/HEIF"
    elif head[:4] == b"\x76\x2f\x31\x01":
        dims, name = _exr(b), "OpenEXR"
    else:
        return None
    if dims is None or dims[0] < 0 or dims[1] < 0:
        return None
    return name, int(dims[0]), int(dims[1])
