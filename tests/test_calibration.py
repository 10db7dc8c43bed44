"""Calibration image selection, manifest and batches (no ModelOpt needed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.data.calibration_set import (
    build_manifest,
    iter_batches,
    manifest_hash,
    manifest_path_for,
    read_manifest,
    select_calibration_images,
    write_manifest,
)
from trt_res2net.data.preprocess import SPEC
from trt_res2net.data.synthetic import make_image, write_images


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    write_images(root / "a", 6, seed=1)
    write_images(root / "b" / "deep", 5, seed=2, ext=".png")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    write_images(root / ".hidden", 2, seed=3)
    return root


def test_selects_all_sorted_when_fewer_than_n(image_tree):
    got = select_calibration_images(image_tree, n=500)
    rel = [p.relative_to(image_tree).as_posix() for p in got]
    assert len(rel) == 11 and rel == sorted(rel)
    assert all(r.startswith(("a/", "b/deep/")) for r in rel)  # recursive; hidden and non-images skipped


def test_sample_is_deterministic_seeded_and_sorted(image_tree):
    a = select_calibration_images(image_tree, n=5, seed=0)
    assert a == select_calibration_images(image_tree, n=5, seed=0)
    assert len(a) == 5 and a == sorted(a, key=lambda p: p.relative_to(image_tree).as_posix())
    seeds = {tuple(select_calibration_images(image_tree, n=5, seed=s)) for s in range(6)}
    assert len(seeds) > 1  # the seed changes the sample


def test_sample_is_the_same_when_the_tree_moves(image_tree, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(image_tree, moved)
    rel = lambda ps, r: [p.relative_to(r).as_posix() for p in ps]  # noqa: E731
    assert rel(select_calibration_images(moved, 4, 7), moved) == rel(
        select_calibration_images(image_tree, 4, 7), image_tree)


def test_no_images_and_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no images in"):
        select_calibration_images(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        select_calibration_images(tmp_path / "missing")
    with pytest.raises(UserError, match="at least 1"):
        select_calibration_images(tmp_path, n=0)


def test_manifest_hash_follows_content_not_location(image_tree, tmp_path):
    images = select_calibration_images(image_tree, n=4)
    m = build_manifest(images, image_tree, seed=0, requested=4)
    assert m["count"] == 4 and m["sha256"] == manifest_hash(m)
    assert m["preprocess_sha256"] == SPEC.sha256()
    assert all(set(e) == {"path", "bytes", "sha256"} and e["bytes"] > 0 for e in m["images"])
    path = write_manifest(manifest_path_for(tmp_path / "x.cache"), m)
    assert path.name == "x.cache.images.json" and read_manifest(path) == m

    moved = tmp_path / "moved"
    shutil.copytree(image_tree, moved)
    m2 = build_manifest(select_calibration_images(moved, n=4), moved)
    assert m2["sha256"] == m["sha256"]

    victim = moved / m["images"][0]["path"]
    victim.write_bytes(victim.read_bytes() + b"\0")  # one changed byte: another calibration set
    assert build_manifest(select_calibration_images(moved, n=4), moved)["sha256"] != m["sha256"]


def test_read_manifest_refuses_other_files(tmp_path):
    (tmp_path / "m.json").write_text('{"x": 1}')
    with pytest.raises(UserError, match="not a trt_res2net calibration manifest"):
        read_manifest(tmp_path / "m.json")


def test_batches_match_the_inference_preprocessing_and_skip_bad_images(image_tree, tmp_path):
    import cv2

    from trt_res2net.data.preprocess import preprocess_bgr

    images = select_calibration_images(image_tree, n=500)[:5]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    items = images[:2] + [broken] + images[2:]
    batches = list(iter_batches(items, batch_size=2))
    arrays = np.concatenate([b[0] for b in batches])
    names = [n for b in batches for n in b[1]]
    failures = [f for b in batches for f in b[2]]
    assert arrays.shape == (5, 3, 224, 224) and arrays.dtype == np.float32
    assert names == [str(p) for p in images]
    assert [f[0] for f in failures] == [str(broken)] and "\n" not in failures[0][1]
    for i, p in enumerate(images):
        np.testing.assert_array_equal(arrays[i], preprocess_bgr(cv2.imread(str(p))))


def test_synthetic_images_are_deterministic(tmp_path):
    a = make_image(np.random.default_rng(5))
    b = make_image(np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    np.testing.assert_array_equal(a, b)
    assert a.std() > 10  # not a flat image
