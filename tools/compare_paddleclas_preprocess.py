#!/usr/bin/env python3
"""Compare trt_res2net's preprocessing with PaddleClas's own deploy code, image by image.

Step 1, in an environment with ``paddleclas`` installed (its OpenCV is whatever that environment has):

    /path/to/paddle-venv/bin/python tools/compare_paddleclas_preprocess.py reference IMAGES_DIR ref.npz

runs PaddleClas's deploy path — ``cv2.imread`` then ``[:, :, ::-1]`` as ``deploy/python/predict_cls.py``
does, then the operators that ``paddleclas.deploy.python.preprocess.create_operators`` builds from the
``PreProcess`` section of ``deploy/configs/inference_cls.yaml`` — and, in the same process, ours; both are
saved.

Step 2, in this project's environment:

    python tools/compare_paddleclas_preprocess.py compare IMAGES_DIR ref.npz

prints per image the largest difference of ours (here) from PaddleClas's, of ours (there) from
PaddleClas's — which isolates the recipe from OpenCV version differences — and which images each side
could not read. ``IMAGES_DIR`` can be made with ``python tools/compare_paddleclas_preprocess.py images DIR``
(the test photographs and every awkward and broken case of the tests).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRANSFORM_OPS = [  # deploy/configs/inference_cls.yaml, PreProcess.transform_ops
    {"ResizeImage": {"resize_short": 256}},
    {"CropImage": {"size": 224}},
    {"NormalizeImage": {"scale": 0.00392157, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                        "order": "", "channel_num": 3}},
    {"ToCHWImage": None},
]


def make_images(directory: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import image_factory as imf

    directory.mkdir(parents=True, exist_ok=True)
    for p in imf.PHOTOS:
        (directory / p.name).write_bytes(p.read_bytes())
    imf.write_all(directory, imf.AWKWARD)
    imf.write_all(directory, imf.BROKEN)
    (directory / "huge6000.jpg").write_bytes(imf.huge_jpeg(6000))
    print(f"wrote {len(list(directory.iterdir()))} images to {directory}")


def reference(directory: Path, out: Path) -> None:
    import cv2
    from paddleclas.deploy.python.preprocess import create_operators

    from trt_res2net.data.preprocess import ImageDecodeError, preprocess

    ops = create_operators(TRANSFORM_OPS)
    # The training configs (ppcls/configs/ImageNet/Res2Net/*.yaml) write the scale as 1.0/255.0.
    train_ops = [dict(op) for op in TRANSFORM_OPS]
    train_ops[2] = {"NormalizeImage": {**TRANSFORM_OPS[2]["NormalizeImage"], "scale": "1.0/255.0"}}
    ops255 = create_operators(train_ops)
    arrays, info = {}, {"opencv": cv2.__version__, "paddle_failed": [], "ours_failed": {}}
    for path in sorted(directory.iterdir()):
        img = cv2.imread(str(path))
        if img is None:
            info["paddle_failed"].append(path.name)
        else:
            img = img[:, :, ::-1]
            for key, chain in (("paddle", ops), ("paddle255", ops255)):
                x = img
                for op in chain:
                    x = op(x)
                arrays[f"{key}/{path.name}"] = np.asarray(x, np.float32)
        try:
            arrays[f"ours/{path.name}"] = preprocess(path)
        except ImageDecodeError as e:
            info["ours_failed"][path.name] = e.reason
    np.savez_compressed(out, info=np.array(json.dumps(info)), **arrays)
    print(f"OpenCV {cv2.__version__}: {sum(k.startswith('paddle/') for k in arrays)} images → {out}")


def compare(directory: Path, ref: Path) -> int:
    import cv2

    from trt_res2net.data.preprocess import ImageDecodeError, preprocess

    data = np.load(ref)
    info = json.loads(str(data["info"]))
    print(f"PaddleClas side: OpenCV {info['opencv']}; this side: OpenCV {cv2.__version__}")
    print("max |difference| from PaddleClas's deploy code (scale 0.00392157 as in inference_cls.yaml; and 1/255)")
    print(f"{'image':18s} {'ours here':>10s} {'ours there':>11s} {'here, 1/255':>12s} {'here==there':>12s}  notes")
    worst = 0.0
    for path in sorted(directory.iterdir()):
        name = path.name
        try:
            here = preprocess(path)
            here_err = None
        except ImageDecodeError as e:
            here, here_err = None, e.reason
        pad = data.get(f"paddle/{name}")
        there = data.get(f"ours/{name}")
        notes = []
        if pad is None:
            notes.append("PaddleClas: unreadable (cv2.imread → None)")
        if here_err:
            notes.append(f"ours here: {here_err}")
        if name in info["ours_failed"]:
            notes.append(f"ours there: {info['ours_failed'][name]}")
        d_here = f"{np.abs(here - pad).max():.3g}" if here is not None and pad is not None else "-"
        d_there = f"{np.abs(there - pad).max():.3g}" if there is not None and pad is not None else "-"
        pad255 = data.get(f"paddle255/{name}")
        d_255 = f"{np.abs(here - pad255).max():.3g}" if here is not None and pad255 is not None else "-"
        same = str(bool(np.array_equal(here, there))) if here is not None and there is not None else "-"
        if here is not None and pad is not None:
            worst = max(worst, float(np.abs(here - pad).max()))
        print(f"{name:18s} {d_here:>10s} {d_there:>11s} {d_255:>12s} {same:>12s}  {'; '.join(notes)}")
    print(f"largest difference, ours here vs PaddleClas: {worst:.3g}")
    return 0


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ("images", "reference", "compare"):
        print(__doc__)
        return 2
    mode, directory = sys.argv[1], Path(sys.argv[2])
    if mode == "images":
        make_images(directory)
        return 0
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    if mode == "reference":
        reference(directory, Path(sys.argv[3]))
        return 0
    return compare(directory, Path(sys.argv[3]))


if __name__ == "__main__":
    raise SystemExit(main())
