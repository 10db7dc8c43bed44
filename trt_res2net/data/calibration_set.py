"""The INT8 calibration image set: which images, their manifest, and their preprocessed batches.

One set and one preprocessing feed both INT8 paths — ModelOpt's Q/DQ quantization here and TensorRT's own
entropy calibrator (the engine builder) — so both select through :func:`select_calibration_images` and
record what they used with :func:`build_manifest` / :func:`write_manifest`.

Selection is deterministic and independent of library versions: all images under the directory, sorted by
relative path; when there are more than ``n``, the ``n`` whose SHA-256 of ``"<seed>:<relative path>"`` is
smallest (a seeded sample that stays the same on every machine and changes little when files are added),
kept in sorted order.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.files import read_json, write_json
from ..core.hashing import sha256_file
from ..core.lazy import lazy_import
from .preprocess import SPEC, PreprocessSpec

np = lazy_import("numpy")

DEFAULT_CALIB_IMAGES = 500


SYNTHETIC_WARNING = (
    "calibrating on {n} generated images (painted scenes, not photographs, data/synthetic.py): the INT8 scales they "
    "give are only for trying the pipeline; for an engine to deploy calibrate on real images like those it will "
    "see (CalibrationImages.directory, a few hundred)"
)


@dataclass(frozen=True)
class CalibrationImages:
    """The INT8 calibration set asked for: up to ``count`` images under ``directory`` (a seeded sample of them
    when there are more). Both INT8 paths read it: ModelOpt's Q/DQ calibration and TensorRT's own calibrator.
    ``synthetic``: the folder holds images made by :func:`synthetic_calibration_images` (recorded as such: their
    scales are only for trying the pipeline)."""

    directory: Path | None = None
    count: int = DEFAULT_CALIB_IMAGES
    seed: int = 0
    synthetic: bool = False

    def __post_init__(self):
        if self.directory is not None:
            object.__setattr__(self, "directory", Path(self.directory))
        if self.count < 1:
            raise UserError(f"CalibrationImages.count must be at least 1, got {self.count}")

    def select(self) -> list[Path]:
        """The images (UserError without a directory, or when it has none)."""
        if self.directory is None:
            raise UserError("no calibration images: pass CalibrationImages.directory=DIR")
        return select_calibration_images(self.directory, self.count, self.seed)

    def materialize(self) -> CalibrationImages:
        """Synthetic images are written (once) when first needed; a folder of real images is what it is."""
        if self.synthetic and self.directory is not None:
            write_synthetic_images(self.directory, self.count, self.seed)
        return self

    def check(self) -> list[Path]:
        """Before any long work: the folder and its selected images exist and can be opened (UserError naming the
        first problem when none can); returns the selection. Images that open but do not decode are found,
        named and skipped when calibration reads them."""
        self.materialize()
        images = self.select()
        unreadable = []
        for path in images:
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as e:
                unreadable.append((path, e.strerror or str(e)))
        if len(unreadable) == len(images):
            path, why = unreadable[0]
            raise UserError(f"none of the {len(images)} calibration images in {self.directory} can be read "
                            f"(e.g. {path}: {why})")
        if unreadable:
            from ..core import log

            path, why = unreadable[0]
            log.warn(f"{len(unreadable)} of the {len(images)} calibration images cannot be read and will be skipped "
                     f"(e.g. {path}: {why})")
        return images


def synthetic_calibration_images(n: int, root: str | os.PathLike, seed: int = 0) -> CalibrationImages:
    """``--calib-synthetic N``: N generated images (``data/synthetic.py``, seeded) in ``root/synthetic_<N>_seed<S>``,
    marked synthetic; written when first needed (``materialize``/``check``) and reused."""
    if n < 1:
        raise UserError(f"synthetic_calibration_images.n must be at least 1, got {n}")
    return CalibrationImages(Path(root) / f"synthetic_{n}_seed{seed}", n, seed, synthetic=True)


def write_synthetic_images(folder: str | os.PathLike, n: int, seed: int = 0) -> Path:
    """N generated images in ``folder`` (into a temporary folder renamed into place, so a complete set or none);
    nothing to do when they are there."""
    from ..core.files import make_temp_dir, remove_path
    from .synthetic import write_images

    folder = Path(folder)
    if folder.is_dir() and len(list(folder.glob("img_*.jpg"))) == n:
        return folder
    tmp = make_temp_dir(folder)
    try:
        write_images(tmp, n, seed=1000 + seed)
        if folder.exists():
            remove_path(folder)
        os.replace(tmp, folder)
    except BaseException:
        remove_path(tmp)
        raise
    return folder
MANIFEST_FORMAT = "trt_res2net.calibration-manifest"
MANIFEST_VERSION = 1


def _find_images(root: Path) -> list[Path]:
    from .images import find_images

    return find_images([root], recursive=True)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def select_calibration_images(calib_dir: str | os.PathLike, n: int = DEFAULT_CALIB_IMAGES,
                              seed: int = 0) -> list[Path]:
    """Up to ``n`` images under ``calib_dir`` (recursive), sorted; a seeded sample when more are present."""
    root = Path(calib_dir)
    if n < 1:
        raise UserError(f"CalibrationImages.count must be at least 1, got {n}")
    if not root.is_dir():
        raise UserError(f"calibration directory {root} does not exist or is not a directory")
    images = sorted(_find_images(root), key=lambda p: _rel(p, root))
    if not images:
        from .images import IMAGE_EXTENSIONS

        raise UserError(f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} in it and its subfolders)")
    if len(images) <= n:
        return images

    def rank(p: Path) -> str:
        return hashlib.sha256(f"{seed}:{_rel(p, root)}".encode()).hexdigest()

    chosen = set(sorted(images, key=rank)[:n])
    return [p for p in images if p in chosen]


def build_manifest(images: Sequence[str | os.PathLike], root: str | os.PathLike, *, seed: int = 0,
                   requested: int | None = None, spec: PreprocessSpec = SPEC) -> dict:
    """The record of a calibration set: every image's relative path, byte size and SHA-256.

    Its hash (:func:`manifest_hash`) covers the images' contents in order — what calibration ranges depend
    on — and not where the folder lives, so the same set copied elsewhere keeps its hash."""
    root = Path(root)
    entries = []
    for p in images:
        p = Path(p)
        try:
            entries.append({"path": _rel(p, root), "bytes": p.stat().st_size, "sha256": sha256_file(p)})
        except OSError as e:
            raise UserError(f"calibration image {p} cannot be read: {e.strerror or e}") from None
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "root": str(root),
        "seed": seed,
        "requested": requested,
        "count": len(entries),
        "preprocess_sha256": spec.sha256(),
        "images": entries,
    }
    manifest["sha256"] = manifest_hash(manifest)
    return manifest


def manifest_hash(manifest: dict) -> str:
    """SHA-256 over the ordered image hashes (paths, root and decode results do not enter it)."""
    digests = [e["sha256"] for e in manifest["images"]]
    return hashlib.sha256(json.dumps(digests, separators=(",", ":")).encode()).hexdigest()


def write_manifest(path: str | os.PathLike, manifest: dict) -> Path:
    return write_json(path, manifest)


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    doc = read_json(path, "calibration manifest")
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or "images" not in doc:
        raise UserError(f"{path} is not a trt_res2net calibration manifest")
    return doc


def manifest_path_for(cache_path: str | os.PathLike) -> Path:
    """``calib/x.cache`` → ``calib/x.cache.images.json`` (the manifest lives next to the cache)."""
    p = Path(cache_path)
    return p.with_name(p.name + ".images.json")


# --------------------------------------------------------------------------------------------------------
# Batches


def iter_batches(paths: Sequence[str | os.PathLike], batch_size: int, spec: PreprocessSpec = SPEC,
                 threads: int = 2) -> Iterator[tuple[np.ndarray, list[str], list[tuple[str, str]]]]:
    """Yield ``(array [n,3,crop,crop] float32, paths, failures)`` through the shared ImageBatcher (decoding
    in threads ahead of the consumer); unreadable images are skipped and listed in ``failures`` as
    (path, one-line reason)."""
    from .images import ImageBatcher

    for batch in ImageBatcher(list(paths), batch_size, spec=spec, threads=threads, exact_batches=False):
        yield batch.array[: len(batch.paths)], list(batch.paths), list(batch.failures)
