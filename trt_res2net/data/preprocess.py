"""PaddleClas's evaluation preprocessing (docs/preprocessing.md): the one spec and its CPU implementation.

Every consumer — inference, calibration, evaluation, the ONNX metadata and the CUDA kernel — reads the
numbers from the model's ``PreprocessSpec`` (``data.preprocess_spec``; ``SPEC`` for the 224×224 Res2Nets), so there
is exactly one place where they live.

Decoding is PaddleClas's: ``cv2.imdecode(bytes, cv2.IMREAD_COLOR)`` (what ``cv2.imread`` does too), so the
awkward cases behave as they do there — grayscale is replicated to three channels, alpha is dropped (not
composited), 16-bit samples keep their high byte, CMYK JPEGs are converted by libjpeg, EXIF orientation is
applied. docs/preprocessing.md lists each case with what was measured.

Decoding is bounded (``ImageLimits``): an input over ``max_bytes`` is refused before it is read, and an image whose
header (``data.image_header``) declares more than ``max_pixels``, a JPEG of too many scans, or a known format whose
header does not say its size, before it is decoded — one line naming the limit and the option that raises it, in
microseconds, without the memory or time the decode would take. Behind that, OpenCV's own limit
(``OPENCV_PIXELS_VARIABLE``, set when this module is imported) bounds every decoder by the size it parses itself.

The implementation is faster than the straight recipe but gives the same float32 values bit for bit:
``cv2.resize`` works per channel, so resizing BGR and reversing afterwards equals reversing first; only the
crop is converted; and the normalisation ``(x * scale - mean) / std`` of an 8-bit value x has only
256 possible results per channel, so it is a table lookup computed with the recipe's own float32 arithmetic.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.lazy import lazy_import
from .image_header import image_format, image_size, jpeg_scans, truncation_reason
from .image_header import jpeg_is_truncated as _jpeg_is_truncated
from .image_header import png_is_truncated as _png_is_truncated
from .preprocess_spec import SPEC, PreprocessSpec, normalization_table

__all__ = ["SPEC", "PreprocessSpec"]  # re-exported: the spec lives in preprocess_spec

np = lazy_import("numpy")


class ImageDecodeError(UserError):
    """An input that is not a readable image: missing, empty, truncated or not an image at all.

    ``reason`` is the one-line cause; the message prefixes it with the file when there is one.
    """

    def __init__(self, reason: str, source: str | os.PathLike | None = None):
        super().__init__(f"{source}: {reason}" if source is not None else reason)
        self.reason = reason
        self.source = None if source is None else str(source)



# What real photographs need (61 MP full-frame sensors; a 50 MP JPEG is 10–30 MB); a 20000×20000 PNG bomb (400 MP,
# ~1 MB) is refused. Stated once here: infer.py's --max-image-* flags and the Triton preprocessing default to them.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEFAULT_MAX_IMAGE_BYTES = 50_000_000
# Every scan of a progressive JPEG is a pass over the whole image: a few hundred make a small file a CPU bomb. 500 is
# the limit libjpeg-turbo's own fuzzers set (TJPARAM_SCANLIMIT); an ordinary progressive JPEG has about 10. At the
# largest sizes 500 passes still take tens of seconds, so the scans are also bounded by their total pixels: as many
# as JPEG_FULL_SIZE_SCANS passes over an image of ``max_pixels`` (32 scans at 64 MP, the 500 at 4 MP and below).
DEFAULT_MAX_JPEG_SCANS = 500
JPEG_FULL_SIZE_SCANS = 32


@dataclass(frozen=True)
class ImageLimits:
    """The largest image decoded: ``max_pixels`` (width × height, as the header declares it), ``max_bytes`` (the
    encoded file or bytes) and ``max_jpeg_scans`` (a JPEG's SOS segments). ``pixels_option`` / ``bytes_option``
    name what raises each limit in the refusal."""

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    pixels_option: str = "ImageLimits(max_pixels=...)"
    bytes_option: str = "ImageLimits(max_bytes=...)"
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS

    def __post_init__(self):
        if self.max_pixels < 1 or self.max_bytes < 1 or self.max_jpeg_scans < 1:
            raise UserError(f"image limits must be ≥ 1 (max_pixels {self.max_pixels}, max_bytes {self.max_bytes}, "
                            f"max_jpeg_scans {self.max_jpeg_scans})")


DEFAULT_LIMITS = ImageLimits()

# OpenCV's own pixel limit: every OpenCV decoder checks the size it parsed from the header against it before it
# allocates, so it bounds what this module's header reader might misjudge. OpenCV reads the variable once, when
# ``cv2`` is first imported in the process (imgcodecs' static initialisation; setting it later has no effect), so it
# is set here, when this module is imported: every decode path (infer.py, the library, calibration, streams' image
# folders, the served models) imports this module before anything imports cv2. A value already in the environment
# is the user's and is kept.
OPENCV_PIXELS_VARIABLE = "OPENCV_IO_MAX_IMAGE_PIXELS"
_OPENCV_DEFAULT_PIXELS = 1 << 30  # what OpenCV uses when the variable is not set
_OPENCV_PIXELS_OURS = False  # whether this module set the variable (and may still raise it, before cv2 is imported)
_OPENCV_PIXELS: int | None = None  # the limit cv2 was imported under, once a decode has imported it


def limit_opencv_pixels(max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> bool:
    """Set OpenCV's own pixel limit for this process to ``max_pixels``; False (nothing changes) once cv2 is
    imported, since OpenCV has read it then."""
    global _OPENCV_PIXELS_OURS
    if "cv2" in sys.modules:
        return False
    os.environ[OPENCV_PIXELS_VARIABLE] = str(max_pixels)
    _OPENCV_PIXELS_OURS = True
    return True


def _environment_pixels() -> int:
    try:
        return int(os.environ.get(OPENCV_PIXELS_VARIABLE, _OPENCV_DEFAULT_PIXELS))
    except ValueError:
        return _OPENCV_DEFAULT_PIXELS


if OPENCV_PIXELS_VARIABLE not in os.environ:
    limit_opencv_pixels()


def _import_cv2(limits: ImageLimits):
    """cv2, imported under OpenCV's pixel limit: raised to ``limits.max_pixels`` first when this module set it and
    cv2 is not imported yet (a decode with a larger limit is the first)."""
    global _OPENCV_PIXELS
    if _OPENCV_PIXELS_OURS and "cv2" not in sys.modules and limits.max_pixels > _environment_pixels():
        limit_opencv_pixels(limits.max_pixels)
    import cv2

    if _OPENCV_PIXELS is None:
        _OPENCV_PIXELS = _environment_pixels()
    return cv2


class ImageTooLarge(ImageDecodeError):
    """An input over an ``ImageLimits`` limit: refused before it is read or decoded."""


def _megabytes(n: int) -> str:
    if n < 1_000_000:
        return f"{n} bytes"
    return f"{n / 1e6:.1f} MB" if n % 1_000_000 else f"{n // 1_000_000} MB"


def check_encoded(data, limits: ImageLimits = DEFAULT_LIMITS, where=None) -> tuple[int, int] | None:
    """Refuse (ImageTooLarge) encoded bytes over ``limits.max_bytes``, whose header declares more than
    ``limits.max_pixels``, or a JPEG of more than ``limits.max_jpeg_scans`` scans; refuse (ImageDecodeError) a known
    format whose header does not say its size (cut short, or malformed where its decoder would read it otherwise).
    Else the declared (width, height); None for data in no format ``image_header`` knows (the decoder judges it,
    under OpenCV's own pixel limit). Reads only the header and the marker structure: no decoding, no memory."""
    _check_bytes(len(data), limits, where)
    scans = jpeg_scans(data)  # None: not a JPEG, or one of too many segments
    if scans is None and bytes(data[:3]) == b"\xff\xd8\xff":
        raise ImageDecodeError("JPEG of too many segments (an abusive marker structure)", where)
    declared = image_size(data)
    if declared is None:
        fmt = image_format(data)
        if fmt is None:
            return None
        raise ImageDecodeError(truncation_reason(bytes(data)) or f"{fmt} whose header does not say its size "
                               "(cut short or malformed): refused rather than decoded unchecked", where)
    fmt, w, h = declared
    _check_pixels(w, h, limits, where, fmt)
    if scans is not None and scans > limits.max_jpeg_scans:
        raise ImageTooLarge(f"JPEG of {scans} scans is over the limit of {limits.max_jpeg_scans} (each scan is a "
                            "pass over the whole image; ImageLimits(max_jpeg_scans=...) raises it)", where)
    if scans is not None and scans * w * h > JPEG_FULL_SIZE_SCANS * limits.max_pixels:
        raise ImageTooLarge(f"JPEG of {scans} scans at {w}×{h} pixels is over the limit of "
                            f"{JPEG_FULL_SIZE_SCANS * limits.max_pixels // (w * h)} scans at that size (each scan is "
                            f"a pass over the whole image; {limits.pixels_option} raises it)", where)
    return w, h


def _check_bytes(n: int, limits: ImageLimits, where) -> None:
    if n > limits.max_bytes:
        raise ImageTooLarge(f"{_megabytes(n)} is over the limit of {_megabytes(limits.max_bytes)} on encoded images "
                            f"({limits.bytes_option} raises it)", where)


def _check_pixels(w: int, h: int, limits: ImageLimits, where, fmt: str = "image") -> None:
    if w * h > limits.max_pixels:
        mp = f"{limits.max_pixels / 1e6:g} MP"
        raise ImageTooLarge(f"{fmt} of {w}×{h} pixels ({w * h / 1e6:.1f} MP) is over the {mp} limit "
                            f"({limits.pixels_option} raises it)", where)


# A resized image larger than this many pixels (only an absurd aspect ratio, over ~2000:1, gets there) is
# refused rather than allocated: PaddleClas would try and exhaust memory.
MAX_RESIZED_PIXELS = 1 << 27


_OPENCV_MAJOR: int | None = None


# ---------------------------------------------------------------------------------------------- decoding


def _source(src) -> str | None:
    return str(src) if isinstance(src, (str, os.PathLike)) else None


def _from_array(img: np.ndarray) -> np.ndarray:
    """An in-memory image → what ``IMREAD_COLOR`` would have made of it: BGR uint8, three channels."""
    import cv2

    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)  # IMREAD_COLOR keeps the high byte of 16-bit samples
    if img.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported array dtype {img.dtype} (expected uint8 BGR)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])  # alpha dropped, as IMREAD_COLOR does
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    raise ImageDecodeError(f"unsupported array shape {img.shape} (expected H×W×3 BGR)")


def _opencv_major() -> int:
    import cv2

    try:
        return int(cv2.__version__.split(".")[0])
    except ValueError:
        return 0


def decode_image(src, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A file path, encoded bytes or a decoded array → BGR uint8 H×W×3, decoded exactly as PaddleClas does.

    Raises ImageDecodeError with a one-line reason (no such file, empty, truncated, not an image), ImageTooLarge
    for an input over ``limits`` (checked on the file size and the header, before reading and decoding; and by
    OpenCV itself, under ``OPENCV_PIXELS_VARIABLE``, before it allocates).
    """
    cv2 = _import_cv2(limits)
    global _OPENCV_MAJOR
    if _OPENCV_MAJOR is None:
        _OPENCV_MAJOR = _opencv_major()
    if isinstance(src, np.ndarray):
        img = _from_array(src)
        if img.shape[0] < 1 or img.shape[1] < 1:
            raise ImageDecodeError("empty image array")
        return img
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            _check_bytes(path.stat().st_size, limits, path)  # refused before it is read
            data = path.read_bytes()  # bytes + imdecode also handles non-ASCII paths, unlike cv2.imread
        except FileNotFoundError:
            raise ImageDecodeError("no such file", path) from None
        except IsADirectoryError:
            raise ImageDecodeError("is a directory", path) from None
        except OSError as e:
            raise ImageDecodeError(str(e.strerror or e), path) from None
        where = path
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data, where = src, None
    else:
        raise ImageDecodeError(f"cannot read an image from a {type(src).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty file", where)
    _check_bytes(len(data), limits, where)
    data = bytes(data)
    declared = check_encoded(data, limits, where)
    if declared is not None and declared[0] * declared[1] > _OPENCV_PIXELS:
        _over_opencv_limit(where, declared)
    if data[:8] == b"\x89PNG\r\n\x1a\n" and _png_is_truncated(data):
        raise ImageDecodeError("truncated PNG (ends before its IEND chunk)", where)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        if "CV_IO_MAX_IMAGE" in str(e):  # OpenCV's own limits, checked on the header it parsed
            _over_opencv_limit(where)
        raise ImageDecodeError(f"not a decodable image ({_first_line(e)})", where) from None
    if img is None or img.size == 0:
        raise ImageDecodeError(truncation_reason(data) or "not a decodable image", where)
    # OpenCV 5 refuses a truncated JPEG, as PaddleClas's decode then does; OpenCV 4 returns the part it
    # could decode (grey below), so there the file is checked to report it rather than classify half of it.
    if _OPENCV_MAJOR < 5 and data[:3] == b"\xff\xd8\xff" and _jpeg_is_truncated(data):
        raise ImageDecodeError("truncated JPEG (ends before its end-of-image marker)", where)
    _check_pixels(img.shape[1], img.shape[0], limits, where)  # a format whose header is not read here
    return img


def _over_opencv_limit(where, declared: tuple[int, int] | None = None):
    if declared is None:  # OpenCV's limits on the size its decoder parsed: the pixels, or 2^20 a side
        raise ImageTooLarge(f"the size its header gives OpenCV is over OpenCV's own limits ({_OPENCV_PIXELS} pixels "
                            f"in this process, from {OPENCV_PIXELS_VARIABLE}; 2^20 a side)", where)
    raise ImageTooLarge(f"{declared[0]}×{declared[1]} pixels is over OpenCV's own limit of {_OPENCV_PIXELS} pixels in "
                        f"this process (the environment variable {OPENCV_PIXELS_VARIABLE}, read when cv2 is first "
                        "imported)", where)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


# ------------------------------------------------------------------------------------------ preprocessing


def _is_buffer(out: np.ndarray, trailing: tuple[int, ...]) -> bool:
    return out.dtype == np.float32 and out.flags.c_contiguous and out.shape[-len(trailing) :] == trailing


def preprocess_bgr(
    image_bgr: np.ndarray, spec: PreprocessSpec = SPEC, out: np.ndarray | None = None
) -> np.ndarray:
    """A decoded 3-channel BGR uint8 image → float32 [3, H, W] (the spec's crop), exactly as PaddleClas evaluates.

    ``out`` (float32 [3, H, W], C-contiguous) receives the result when given.
    """
    import cv2

    new_w, new_h = _resized_size(image_bgr, spec)
    # Resizing the BGR image equals resizing its RGB view (cv2 interpolates each channel alone) and
    # avoids the copy that a negatively strided view costs.
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    x0, y0 = spec.crop_offsets(new_w, new_h)
    h, w = spec.crop_hw
    crop = resized[y0 : y0 + h, x0 : x0 + w]
    if out is None:
        out = np.empty((3, h, w), np.float32)
    elif out.shape != (3, h, w) or not _is_buffer(out, (h, w)):
        raise ValueError(f"out must be C-contiguous float32 {(3, h, w)}, got {out.dtype} {out.shape}")
    table = normalization_table(spec)
    planes = cv2.split(crop)  # B, G, R (contiguous 8-bit planes)
    for ch in range(3):  # RGB output channel ch comes from BGR plane 2 - ch
        dst = out[ch]
        res = cv2.LUT(planes[2 - ch], table[ch].reshape(1, 256), dst=dst)
        if res is not dst and not np.shares_memory(res, dst):  # cv2 may hand back a new array
            dst[...] = res
    return out


def _resized_size(image_bgr: np.ndarray, spec: PreprocessSpec) -> tuple[int, int]:
    """The short-side resize's (width, height); ImageDecodeError for an absurd aspect ratio."""
    h, w = image_bgr.shape[:2]
    new_w, new_h = spec.resized_size(w, h)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise ImageDecodeError(f"aspect ratio too extreme: {w}×{h} would resize to {new_w}×{new_h}")
    return new_w, new_h


@contextmanager
def _one_line_errors(image):
    """Any failure on ``image`` becomes an ImageDecodeError naming it (one line, never a traceback)."""
    try:
        yield
    except ImageDecodeError as e:
        if e.source is None and _source(image) is not None:
            raise type(e)(e.reason, _source(image)) from None
        raise
    except Exception as e:
        raise ImageDecodeError(_first_line(e), _source(image)) from None


def preprocess(image, spec: PreprocessSpec = SPEC, out: np.ndarray | None = None,
               limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A path, encoded bytes or BGR uint8 array → float32 [3, H, W], the spec's crop (raises ImageDecodeError)."""
    with _one_line_errors(image):
        return preprocess_bgr(decode_image(image, limits), spec, out)


def decode_for_preprocessing(image, spec: PreprocessSpec = SPEC, limits: ImageLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A path, encoded bytes or BGR uint8 array → decoded BGR uint8 [H, W, 3], refused (ImageDecodeError)
    exactly when :func:`preprocess` would refuse it: for preprocessing elsewhere (the GPU) that skips the
    same images as the CPU path."""
    with _one_line_errors(image):
        image_bgr = decode_image(image, limits)
        _resized_size(image_bgr, spec)
        return image_bgr


def preprocess_batch(
    images: Sequence, out: np.ndarray | None = None, threads: int = 2, spec: PreprocessSpec = SPEC,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """N images (paths, bytes or arrays) → float32 [N, 3, H, W] (the spec's crop), decoded in ``threads`` threads.

    ``out`` may be a caller's buffer (e.g. pinned host memory) of at least N rows; the first N rows are
    written and that view returned. The first unreadable image raises ImageDecodeError naming it; use
    ``trt_res2net.data.images.ImageBatcher`` to skip bad images instead.
    """
    n, (h, w) = len(images), spec.crop_hw
    if out is None:
        out = np.empty((n, 3, h, w), np.float32)
    elif out.shape[0] < n or not _is_buffer(out, (3, h, w)):
        raise ValueError(f"out must be C-contiguous float32 [>={n},3,{h},{w}], not {out.dtype} {out.shape}")
    out = out[:n]

    def one(i: int) -> None:
        preprocess(images[i], spec, out[i], limits)

    if threads <= 1 or n <= 1:
        for i in range(n):
            one(i)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(threads, n)) as pool:
            for f in [pool.submit(one, i) for i in range(n)]:
                f.result()  # the first failure, in input order
    return out
