"""Finding images and batching them: the one batcher shared by inference, calibration and evaluation.

Like the ImageBatcher of NVIDIA's TensorRT Python samples, but images are decoded and preprocessed in a
thread pool ahead of the consumer (OpenCV releases the GIL), so decoding overlaps inference; and a bad
image is skipped and reported with its reason rather than ending the run.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .preprocess import (
    DEFAULT_LIMITS,
    SPEC,
    ImageDecodeError,
    ImageLimits,
    PreprocessSpec,
    decode_for_preprocessing,
    preprocess,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _visible(path: Path, root: Path) -> bool:
    """Hidden files and folders (e.g. macOS's ``._photo.jpg`` metadata files) are not images."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def find_images(paths: Iterable[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """Files named as they are; directories walked for IMAGE_EXTENSIONS (any case), sorted per directory,
    hidden files and folders skipped.

    A file named explicitly is kept whatever its extension (the decoder decides), also when the operating system
    will not let it be read (permission denied on it or on a folder above it): reading it then fails, and it is
    named and skipped like any unreadable image. A path that does not exist, a symbolic link loop and a folder that
    cannot be listed raise UserError (one line). The result keeps the order of ``paths``; each directory's images
    are sorted.
    """
    import errno
    import stat

    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            raise UserError(f"{p}: no such file or directory") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"{p}: a symbolic link loop") from None
            found.append(p)  # e.g. inside a folder it may not enter: reading it says why, and it is skipped
            continue
        if stat.S_ISDIR(mode):
            try:
                os.listdir(p)
            except OSError as e:
                raise UserError(f"{p}: cannot list the folder ({e.strerror or e})") from None
            walker = p.rglob("*") if recursive else p.glob("*")
            found.extend(sorted(f for f in walker if is_image_name(f) and f.is_file() and _visible(f, p)))
        elif not stat.S_ISREG(mode):  # reading a FIFO or a device would wait forever, or never end
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "not a regular file"
            raise UserError(f"{p}: is {kind}, not an image file")
        else:
            found.append(p)
    return found


@dataclass
class Batch:
    """``array`` float32 [n, 3, crop, crop] holds the images of ``paths`` in order (from a ``decode_only``
    batcher: ``array`` is None and ``images`` holds the decoded BGR uint8 arrays); ``failures`` are the
    (path, one-line reason) of images skipped since the previous batch. ``indices`` and
    ``failure_indices`` are positions in the batcher's items (to attach labels, or restore input order)."""

    array: np.ndarray | None
    paths: list[str]
    failures: list[tuple[str, str]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    failure_indices: list[int] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self):
        """Unpacks as ``array, paths, failures = batch`` (the positions first agreed on)."""
        return iter((self.array, self.paths, self.failures))


def _name(item, index: int) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"<item {index}>"


class ImageBatcher:
    """Iterate ``Batch``es of ``batch_size`` preprocessed images from ``items`` (paths, bytes or arrays).

    Bad images are skipped: they appear in the ``failures`` of the batch being filled when they were met
    (and in ``self.failures`` for the whole run). With ``exact_batches`` every batch has exactly
    ``batch_size`` images (calibration wants that) and the remainder is dropped (counted in
    ``self.dropped``); otherwise the last batch is short, and a final empty batch carries failures met
    after the last image. Up to ``prefetch`` images (default: two batches) are decoded ahead.

    ``decode_only``: batches of decoded BGR uint8 images (``Batch.images``) for preprocessing elsewhere
    (the GPU); the same images are refused as when preprocessing here. ``limits``: images over them are skipped
    (refused from their size and header, before they are read or decoded).
    """

    def __init__(
        self,
        items: Sequence,
        batch_size: int,
        spec: PreprocessSpec = SPEC,
        threads: int = 2,
        exact_batches: bool = False,
        prefetch: int | None = None,
        decode_only: bool = False,
        limits: ImageLimits = DEFAULT_LIMITS,
    ):
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        self.items = list(items)
        self.batch_size = batch_size
        self.spec = spec
        self.threads = max(1, threads)
        self.exact_batches = exact_batches
        self.decode_only = decode_only
        self.limits = limits
        self.prefetch = max(prefetch or 2 * batch_size, self.threads)
        self.failures: list[tuple[str, str]] = []
        self.dropped = 0

    def __len__(self) -> int:
        """Batches if no image fails."""
        n = len(self.items)
        return n // self.batch_size if self.exact_batches else -(-n // self.batch_size)

    def _load(self, item) -> np.ndarray:
        if self.decode_only:
            return decode_for_preprocessing(item, self.spec, self.limits)
        return preprocess(item, self.spec, limits=self.limits)

    def __iter__(self) -> Iterator[Batch]:
        from concurrent.futures import ThreadPoolExecutor

        self.failures, self.dropped = [], 0
        crop = self.spec.crop_hw
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
        pending: deque = deque()
        todo = iter(enumerate(self.items))

        def top_up() -> None:
            while len(pending) < self.prefetch:
                nxt = next(todo, None)
                if nxt is None:
                    return
                i, item = nxt
                pending.append((i, item, pool.submit(self._load, item)))

        def new_batch() -> Batch:
            return Batch(None if self.decode_only else np.empty((self.batch_size, 3, *crop), np.float32), [])

        try:
            top_up()
            batch = new_batch()
            while pending:
                i, item, future = pending.popleft()
                top_up()
                try:
                    image = future.result()
                except ImageDecodeError as e:
                    failure = (_name(item, i), e.reason)
                    batch.failures.append(failure)
                    batch.failure_indices.append(i)
                    self.failures.append(failure)
                    continue
                if self.decode_only:
                    batch.images.append(image)
                else:
                    batch.array[len(batch.paths)] = image
                batch.paths.append(_name(item, i))
                batch.indices.append(i)
                if len(batch.paths) == self.batch_size:
                    yield batch
                    batch = new_batch()
            n = len(batch.paths)
            if self.exact_batches:
                self.dropped = n
            elif n or batch.failures:
                if batch.array is not None:
                    batch.array = batch.array[:n]
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
