"""How large an encoded image says it is, read from its header before anything is decoded, the way its decoder reads it.

``image_size(data)`` gives ``(format, width, height)`` as the header declares them — what the decoder will
allocate — for every format the OpenCV builds this project uses decode: JPEG (the frame header, SOF), PNG (IHDR),
BMP, WebP (VP8, VP8L, VP8X), GIF, TIFF and BigTIFF (the first IFD: the page ``imdecode`` reads), JPEG 2000 (JP2's
``ihdr`` or the codestream's SIZ), PNM/PAM/PFM, Sun raster, Radiance HDR, AVIF/HEIF (``ispe``) and OpenEXR
(``dataWindow``). Each reader follows its decoder where a second parser could read otherwise: TIFF as libtiff (the
first of duplicated ImageWidth / ImageLength entries, every integer type, values it refuses refused), PNM as
OpenCV's ReadNumber and Radiance HDR as its RGBE_ReadHeader (comments and header lines of any length, read to the
end of the data if need be). ``None`` when the data is in none of these formats (``image_format`` says which) or its
header does not say: cut short, or a value the decoder refuses; the caller then refuses the image
(``preprocess.check_encoded``). ``jpeg_scans`` counts a JPEG's scans (a CPU-time bound), and the truncation walks
say whether a JPEG or PNG ends before its end marker. Reading is slices and regular expressions over the bytes
(a JPEG's segments are skipped by their lengths, at most ``MAX_JPEG_SEGMENTS``), so a refusal costs microseconds to
milliseconds however large the image claims to be. Only the standard library: the Triton preprocessing model runs a
copy of this file (``trt_res2net_vendored/data/``).
"""

from __future__ import annotations

import re

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # not C4 (DHT), C8, CC


def _u16(b, pos: int, big: bool = True) -> int:
    return int.from_bytes(b[pos : pos + 2], "big" if big else "little")


def _u32(b, pos: int, big: bool = True) -> int:
    return int.from_bytes(b[pos : pos + 4], "big" if big else "little")


# Segments walked before the frame header, and in all (``jpeg_scans``): real files have tens (a progressive one at the
# scan limit about a thousand); past this the structure is refused, so that walking it stays a matter of milliseconds.
MAX_JPEG_SEGMENTS = 10_000
_JPEG_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker ending entropy-coded data


def _jpeg(b) -> tuple[int, int] | None:
    """The first frame header's dimensions. Bytes between segments are skipped the way libjpeg skips them (to
    the next 0xFF that starts a marker), so garbage cannot hide a frame header that the decoder would find."""
    n, pos = len(b), 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if pos + 4 > n:
            return None
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


def jpeg_scans(data) -> int | None:
    """How many scans (SOS segments) a JPEG holds up to its end-of-image marker: segments are skipped by their
    lengths and entropy-coded data up to the next marker, as libjpeg reads them. None when there are more than
    ``MAX_JPEG_SEGMENTS`` segments, or the data is not a JPEG."""
    b = data if isinstance(data, (bytes, bytearray)) else bytes(memoryview(data))
    if bytes(b[:3]) != b"\xff\xd8\xff":
        return None
    n, pos, scans = len(b), 2, 0
    for _ in range(MAX_JPEG_SEGMENTS):
        if pos < n and b[pos] != 0xFF:  # garbage where a marker belongs: libjpeg skips it to the next 0xFF
            pos = b.find(b"\xff", pos)
            if pos < 0:
                return scans
        while pos + 1 < n and b[pos] == 0xFF and b[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 4 > n or b[pos + 1] == 0xD9:
            return scans  # the end, or end of image
        marker = b[pos + 1]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        pos += 2 + _u16(b, pos + 2)
        if marker == 0xDA:
            scans += 1
            m = _JPEG_ENTROPY_END.search(b, pos)
            if m is None:
                return scans
            pos = m.start()
    return None


def jpeg_is_truncated(data: bytes) -> bool:
    """Walk the JPEG's markers from SOI; True when the data ends before the end-of-image marker.

    Segments (with embedded EXIF thumbnails) are skipped by their lengths and entropy-coded data by a
    regex, so this is quick; data after EOI (e.g. a motion photo's video) is ignored.
    """
    n, pos = len(data), 2
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > n or data[pos] != 0xFF:
            return pos + 2 > n  # ran out: truncated; garbage instead of a marker: let the decoder judge
        marker = data[pos + 1]
        if marker == 0xD9:
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2
            continue
        if pos + 4 > n:
            return True
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker == 0xDA:  # start of scan: skip the entropy-coded data up to the next marker
            m = _JPEG_ENTROPY_END.search(data, pos)
            if m is None:
                return True
            pos = m.start()


def png_is_truncated(data: bytes) -> bool:
    """Walk the PNG's chunks; True when the data ends before IEND (checked before libpng, which would
    print to stderr)."""
    n, pos = len(data), 8
    while pos + 8 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IEND":
            return False
        pos += 12 + length
    return True


def truncation_reason(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff" and jpeg_is_truncated(data):
        return "truncated JPEG (ends before its end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and png_is_truncated(data):
        return "truncated PNG (ends before its IEND chunk)"
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


# TIFF field types libtiff reads an ImageWidth / ImageLength of (TIFFReadDirEntryLong): size, signed.
_TIFF_INTEGERS = {1: (1, False), 3: (2, False), 4: (4, False), 6: (1, True), 8: (2, True), 9: (4, True),
                  13: (4, False), 16: (8, False), 17: (8, True), 18: (8, False)}
_TIFF_MAX_ENTRIES = 4096  # libtiff refuses a directory of more entries ("Sanity check on directory count failed")


def _tiff_value(b, entry: int, value_at: int, inline: int, order: str) -> int | None:
    """An ImageWidth / ImageLength entry's value as libtiff reads it: one integer of any integer type, inline or at
    its offset when it does not fit; None where libtiff refuses it (another type, a count other than 1, a negative
    or over 32-bit value, an offset past the end)."""
    kind = int.from_bytes(b[entry + 2 : entry + 4], order)
    count = int.from_bytes(b[entry + 4 : entry + value_at], order)
    if kind not in _TIFF_INTEGERS or count != 1:
        return None
    size, signed = _TIFF_INTEGERS[kind]
    at = entry + value_at
    if size > inline:  # LONG8 in a classic TIFF: the entry holds its offset
        at = int.from_bytes(b[at : at + inline], order)
    if at + size > len(b):
        return None
    value = int.from_bytes(b[at : at + size], order, signed=signed)
    return value if 0 <= value <= 0xFFFFFFFF else None


def _tiff(b) -> tuple[int, int] | None:
    """The first IFD's ImageWidth and ImageLength as libtiff reads them: of a tag that appears twice the first entry
    counts (libtiff ignores the later ones), every integer type; None when either is missing or one libtiff refuses."""
    order = "big" if bytes(b[:2]) == b"MM" else "little"
    if int.from_bytes(b[2:4], order) == 43:  # BigTIFF
        ifd, count_size, entry_size, value_at, inline = int.from_bytes(b[8:16], order), 8, 20, 12, 8
    else:
        ifd, count_size, entry_size, value_at, inline = int.from_bytes(b[4:8], order), 2, 12, 8, 4
    count = int.from_bytes(b[ifd : ifd + count_size], order)
    if ifd + count_size > len(b) or count > _TIFF_MAX_ENTRIES or ifd + count_size + count * entry_size > len(b):
        return None  # libtiff cannot read the whole directory: it refuses the file
    dims: dict[int, int | None] = {}
    for i in range(count):
        entry = ifd + count_size + i * entry_size
        tag = int.from_bytes(b[entry : entry + 2], order)
        if tag in (256, 257) and tag not in dims:  # ImageWidth, ImageLength: the first entry wins
            dims[tag] = _tiff_value(b, entry, value_at, inline, order)
    width, height = dims.get(256), dims.get(257)
    return (width, height) if width is not None and height is not None else None


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


# OpenCV's ReadNumber (grfmt_pxm.cpp) skips whitespace and comments ("#" up to a CR or LF) before a number.
_PNM_SPACE = re.compile(rb"[ \t\n\v\f\r]*")
_PNM_COMMENT = re.compile(rb"#[^\n\r]*[\n\r]")
_PNM_DIGITS = re.compile(rb"[0-9]+")
MAX_PNM_COMMENTS = 4096  # before one number; more is refused (an abusive header), not read one by one
_INT_MAX = 2**31 - 1


def _pnm_skip(b, pos: int) -> int | None:
    """Where the next number starts after whitespace and comments; None past MAX_PNM_COMMENTS comments."""
    for _ in range(MAX_PNM_COMMENTS + 1):
        pos = _PNM_SPACE.match(b, pos).end()
        comment = _PNM_COMMENT.match(b, pos)
        if comment is None:
            return pos
        pos = comment.end()
    return None


def _pnm_number(b, pos: int) -> tuple[int, int] | None:
    """OpenCV's ReadNumber at ``pos``: (the number, where the next one starts: the byte after the number's
    terminating byte, which ReadNumber consumes); None where it fails (another byte, the end, over INT_MAX, more
    than MAX_PNM_COMMENTS comments before it)."""
    start = _pnm_skip(b, pos)
    if start is None:
        return None
    pos = start
    m = _PNM_DIGITS.match(b, pos)
    if m is None or m.end() >= len(b) or m.end() - pos > 10 or int(m.group()) > _INT_MAX:
        return None
    return int(m.group()), m.end() + 1


def _pam(b) -> tuple[int, int] | None:
    """PAM: ``WIDTH`` and ``HEIGHT`` lines up to ``ENDHDR``; None unless each appears exactly once."""
    end = b.find(b"\nENDHDR")
    if end < 0:
        return None
    fields = re.findall(rb"^[ \t]*(WIDTH|HEIGHT)[ \t]+([0-9]{1,10})[ \t\r]*$", bytes(b[: end + 1]), flags=re.M)
    named = dict(fields)
    if len(fields) != 2 or len(named) != 2 or max(int(v) for v in named.values()) > _INT_MAX:
        return None
    return int(named[b"WIDTH"]), int(named[b"HEIGHT"])


def _pfm(b) -> tuple[int, int] | None:
    """PFM: ``Pf`` / ``PF``, then width and height as plain decimal tokens (anything else: None)."""
    m = re.match(rb"P[fF]\s+([0-9]{1,10})\s+([0-9]{1,10})\s", bytes(b[:64]))
    if m is None or max(int(m.group(1)), int(m.group(2))) > _INT_MAX:
        return None
    return int(m.group(1)), int(m.group(2))


def _pnm(b) -> tuple[int, int] | None:
    """P1–P6 read as OpenCV reads them, over the whole header however long its comments (P7: ``_pam``)."""
    if b[1:2] == b"7":
        return _pam(b)
    if b[1:2] in b"fF":
        return _pfm(b)
    width = _pnm_number(b, 2)
    height = _pnm_number(b, width[1]) if width is not None else None
    return (width[0], height[0]) if height is not None else None


_HDR_FORMAT = b"FORMAT=32-bit_rle_rgbe"
# A header line that needs a closer look: empty, starting with NUL, long enough for more than one fgets() chunk, or
# the FORMAT line. Others (short, not FORMAT) are skipped as OpenCV's RGBE_ReadHeader skips them.
_HDR_LINE = re.compile(rb"^(?:\n|\x00|[^\n]{127}|" + _HDR_FORMAT + rb"\n)", re.M)
_HDR_SIZE = re.compile(rb"-Y\s*([-+]?[0-9]+)\s*\+X\s*([-+]?[0-9]+)")
_HDR_CHUNK = 127  # RGBE_ReadHeader reads lines with fgets() into 128 bytes


def _hdr_format_end(b) -> int | None:
    """Where the header line after ``FORMAT=32-bit_rle_rgbe`` starts, as RGBE_ReadHeader finds it: lines are read in
    chunks of 127 bytes, and an empty chunk or one starting with NUL before the FORMAT chunk is an error."""
    pos = 0
    while True:
        m = _HDR_LINE.search(b, pos)
        if m is None or b[m.start()] in (0x0A, 0x00):
            return None
        start = m.start()
        if m.end() - start < _HDR_CHUNK:  # the FORMAT line itself
            return m.end()
        eol = b.find(b"\n", start)
        if eol < 0 or 0 in b[start:eol:_HDR_CHUNK]:
            return None
        tail = start + (eol - start) // _HDR_CHUNK * _HDR_CHUNK  # where the line's last chunk starts
        if tail == eol:  # a line of a multiple of 127 bytes: its last chunk is "\n", an empty line
            return None
        if b[tail : eol + 1] == _HDR_FORMAT + b"\n":
            return eol + 1
        pos = eol + 1


def _hdr(b) -> tuple[int, int] | None:
    """Radiance, as OpenCV's RGBE_ReadHeader reads it: header lines up to ``FORMAT=32-bit_rle_rgbe``, an empty
    line, then ``-Y <rows> +X <columns>`` (the only orientation it reads); the header may be of any length."""
    pos = _hdr_format_end(b)
    if pos is None or b[pos : pos + 1] != b"\n":
        return None
    line = bytes(b[pos + 1 : pos + 1 + _HDR_CHUNK]).split(b"\n", 1)[0].split(b"\x00", 1)[0]
    m = _HDR_SIZE.match(line)
    if m is None or max(abs(int(m.group(1))), abs(int(m.group(2)))) > _INT_MAX:
        return None
    return int(m.group(2)), int(m.group(1))


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


def _png(b) -> tuple[int, int] | None:
    return (_u32(b, 16), _u32(b, 20)) if len(b) >= 24 and bytes(b[12:16]) == b"IHDR" else None


def _gif(b) -> tuple[int, int] | None:
    return (_u16(b, 6, False), _u16(b, 8, False)) if len(b) >= 10 else None


def _sun(b) -> tuple[int, int] | None:
    return (_u32(b, 4), _u32(b, 8)) if len(b) >= 12 else None


# Each format: its name, whether the first 16 bytes are its signature (as the decoder recognises it), its reader.
_FORMATS = (
    ("PNG", lambda h: h[:8] == b"\x89PNG\r\n\x1a\n", _png),
    ("JPEG", lambda h: h[:3] == b"\xff\xd8\xff", _jpeg),
    ("BMP", lambda h: h[:2] == b"BM", _bmp),
    ("WebP", lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", _webp),
    ("GIF", lambda h: h[:6] in (b"GIF87a", b"GIF89a"), _gif),
    ("TIFF", lambda h: h[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff),
    ("JPEG 2000", lambda h: h[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n", _jp2),
    ("JPEG 2000", lambda h: h[:2] == b"\xff\x4f", _j2k),
    ("PNM", lambda h: h[:1] == b"P" and h[1:2] in b"1234567fF" and h[2:3] in b" \t\n\v\f\r" and len(h) > 2, _pnm),
    ("Sun raster", lambda h: h[:4] == b"\x59\xa6\x6a\x95", _sun),
    ("Radiance HDR", lambda h: h[:2] == b"#?", _hdr),
    ("AVIF/HEIF", lambda h: h[4:8] == b"ftyp", _isobmff),
    ("OpenEXR", lambda h: h[:4] == b"\x76\x2f\x31\x01", _exr),
)


def image_format(data) -> str | None:
    """The name of the format whose signature ``data`` starts with (``image_size`` reads its header), or None."""
    head = bytes(data[:16])
    return next((name for name, signed, _ in _FORMATS if signed(head)), None)


def image_size(data) -> tuple[str, int, int] | None:
    """``(format, width, height)`` declared by an encoded image's header, or None (another format, or a header that
    does not say: cut short, or one its decoder refuses)."""
    b = data if isinstance(data, (bytes, bytearray)) else bytes(memoryview(data))
    head = bytes(b[:16])
    for name, signed, read in _FORMATS:
        if signed(head):
            dims = read(b)
            if dims is None or dims[0] < 0 or dims[1] < 0:
                return None
            return name, int(dims[0]), int(dims[1])
    return None
