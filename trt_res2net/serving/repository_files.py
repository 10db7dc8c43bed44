"""The files of a Triton repository besides the configs (the Python models, the vendored modules, the warm-up
image), and the atomic write: the repository is built in a temporary folder beside its target and renamed into
place, so the target is either the old repository or the complete new one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..core.version import __version__
from .model_configs import VENDORED_PACKAGE, WARMUP_FOLDER, WARMUP_SAMPLE
from .repository_record import REPOSITORY_FILE
from .triton_proto import config_text

# A file of a model folder: its path there, and where its bytes come from (a file linked or copied, or the text or
# bytes themselves).
FileSource = Path | str | bytes
# The modules copied byte for byte, in their subpackages (their relative imports keep working there).
VENDORED_MODULES = (
    "core/errors.py", "core/lazy.py", "data/image_header.py", "data/preprocess.py", "data/preprocess_spec.py",
    "data/postprocess.py",
    "serving/triton_models/decode_lane.py", "serving/triton_models/steps.py")
TEMPLATES = {"preprocess": "preprocess_model.py", "postprocess": "postprocess_model.py",
             "pipeline": "pipeline_model.py"}
WARMUP_IMAGE = f"{WARMUP_FOLDER}/{WARMUP_SAMPLE}"  # Triton's serialized BYTES: length + data


def template(kind: str) -> str:
    """The Python model ``kind`` (``TEMPLATES``), the ``1/model.py`` of its model."""
    return resources.files("trt_res2net.serving.triton_models").joinpath(TEMPLATES[kind]).read_text(encoding="utf-8")


def vendored_files() -> list[tuple[str, FileSource]]:
    """This package's preprocessing and postprocessing as ``1/trt_res2net_vendored/``, byte for byte."""
    package = resources.files("trt_res2net")
    files: list[tuple[str, FileSource]] = [(f"1/{VENDORED_PACKAGE}/__init__.py",
                                            f'"""trt_res2net {__version__}\'s preprocessing and postprocessing, '
                                            'copied byte for byte by build.py --triton-repo."""\n')]
    folders = {"/".join(module.split("/")[:i]) for module in VENDORED_MODULES
               for i in range(1, module.count("/") + 1)}
    for folder in sorted(folders):
        files.append((f"1/{VENDORED_PACKAGE}/{folder}/__init__.py", ""))
    for module in VENDORED_MODULES:
        files.append((f"1/{VENDORED_PACKAGE}/{module}", package.joinpath(module).read_text(encoding="utf-8")))
    return files


def warmup_image() -> bytes:
    """A JPEG of a synthetic scene at ImageNet validation sizes, serialized as Triton reads a BYTES warm-up input:
    a 4-byte little-endian length, then the bytes."""
    import struct

    import cv2
    import numpy as np

    from ..data.synthetic import make_image

    _, jpeg = cv2.imencode(".jpg", make_image(np.random.default_rng(0), size_range=(375, 500)),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
    return struct.pack("<I", len(jpeg)) + jpeg.tobytes()


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no copy (files are replaced by rename, never rewritten in place)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass(frozen=True)
class ModelFolder:
    """One model's folder: its ModelConfig, the comment its config.pbtxt starts with, and its other files."""

    config: Any  # Triton's ModelConfig message
    comment: str
    files: list[tuple[str, FileSource]]


def _write_model(folder: Path, model: ModelFolder) -> None:
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_text(model.config, model.comment), encoding="utf-8")
    for rel, source in model.files:
        dst = folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            link_or_copy(source, dst)
        elif isinstance(source, bytes):
            dst.write_bytes(source)
        else:
            dst.write_text(source, encoding="utf-8")


def write_atomically(out_dir: Path, models: dict[str, ModelFolder], record: dict) -> None:
    """Write ``models`` (by name) and the ``record`` as the repository ``out_dir``,
    replacing the one there by a rename."""
    from ..core.files import current_umask, write_json

    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=parent))
    old = None
    try:
        for name, model in models.items():
            _write_model(tmp / name, model)
        write_json(tmp / REPOSITORY_FILE, record)
        os.chmod(tmp, 0o777 & ~current_umask())
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if old is not None:
                os.rename(old, out_dir)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
