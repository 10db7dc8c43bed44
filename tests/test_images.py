"""find_images and the shared ImageBatcher: order, exact batches, skipped bad images, prefetching."""

from __future__ import annotations

import image_factory as imf
import numpy as np
import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.data.images import IMAGE_EXTENSIONS, Batch, ImageBatcher, find_images, is_image_name
from trt_res2net.data.preprocess import preprocess


def test_extensions_are_case_insensitive():
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    for name in ("a.JPG", "b.Jpeg", "c.PNG", "d.bmp", "e.WebP"):
        assert is_image_name(name)
    for name in ("a.gif", "b.txt", "c.jpg.part", "noext"):
        assert not is_image_name(name)


def test_find_images_walks_sorted_and_keeps_explicit_files(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("b.JPG", "a.png", "sub/c.jpeg", "sub/deeper/d.WEBP", "e.bmp", "notes.txt", "x.gif",
                ".hidden/f.jpg", "._g.jpg"):
        (tmp_path / rel).write_bytes(b"x")
    found = find_images([tmp_path])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a.png", "b.JPG", "e.bmp", "sub/c.jpeg", "sub/deeper/d.WEBP"]
    flat = [p.name for p in find_images([tmp_path], recursive=False)]
    assert flat == ["a.png", "b.JPG", "e.bmp"]
    # An explicitly named file is kept whatever its extension; order of arguments is kept.
    both = find_images([tmp_path / "x.gif", tmp_path / "sub"])
    assert [p.name for p in both] == ["x.gif", "c.jpeg", "d.WEBP"]
    assert find_images([tmp_path / "sub" / "deeper"]) == [tmp_path / "sub" / "deeper" / "d.WEBP"]


def test_find_images_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing.jpg"):
        find_images([tmp_path / "missing.jpg"])


def _mixed(tmp_path):
    good = imf.write_all(tmp_path, {n: imf.AWKWARD[n] for n in ("gray.png", "rgba.png", "cmyk.jpg")})
    bad = imf.write_all(tmp_path, {n: imf.BROKEN[n] for n in ("empty.jpg", "truncated.jpg")})
    # photo, bad, photo, photo, gray, bad, photo, rgba, cmyk
    items = [imf.PHOTOS[0], bad[0], imf.PHOTOS[1], imf.PHOTOS[2], good[0], bad[1], imf.PHOTOS[3],
             good[1], good[2]]
    return items, {str(bad[0]), str(bad[1])}


def test_batches_in_order_with_bad_images_skipped(tmp_path):
    items, bad = _mixed(tmp_path)
    batcher = ImageBatcher(items, batch_size=3, threads=2)
    assert len(batcher) == 3 and len(batcher.items) == 9
    batches = list(batcher)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(isinstance(b, Batch) and b.array.dtype == np.float32 for b in batches)
    assert [b.array.shape for b in batches] == [(3, 3, 224, 224), (3, 3, 224, 224), (1, 3, 224, 224)]
    good = [str(p) for p in items if str(p) not in bad]
    assert [p for b in batches for p in b.paths] == good
    assert [i for b in batches for i in b.indices] == [0, 2, 3, 4, 6, 7, 8]
    # Failures ride with the batch being filled when they were met, with one-line reasons.
    assert batches[0].failures[0][0] == str(items[1]) and batches[0].failure_indices == [1]
    assert batches[1].failures[0][0] == str(items[5]) and "truncated" in batches[1].failures[0][1]
    assert {p for p, _ in batcher.failures} == bad
    assert all("\n" not in reason and reason for _, reason in batcher.failures)
    for b in batches:
        for row, path in zip(b.array, b.paths, strict=True):
            np.testing.assert_array_equal(row, preprocess(path))
    array, paths, failures = batches[0]  # unpacks like a tuple
    assert array is batches[0].array and paths == batches[0].paths and failures == batches[0].failures


def test_exact_batches_drop_the_remainder(tmp_path):
    items, _ = _mixed(tmp_path)
    batcher = ImageBatcher(items, batch_size=2, exact_batches=True)
    batches = list(batcher)
    assert [len(b) for b in batches] == [2, 2, 2]
    assert all(b.array.shape[0] == 2 for b in batches)
    assert batcher.dropped == 1 and len(batcher.failures) == 2
    assert len(batcher) == 4  # without failures there would have been 4 full batches


def test_trailing_failures_come_in_an_empty_batch(tmp_path):
    bad = imf.write_all(tmp_path, {"random.jpg": imf.BROKEN["random.jpg"]})
    batches = list(ImageBatcher([imf.PHOTOS[0], bad[0]], batch_size=1))
    assert [len(b) for b in batches] == [1, 0]
    assert batches[1].array.shape == (0, 3, 224, 224) and batches[1].failures[0][0] == str(bad[0])
    only_bad = list(ImageBatcher(bad, batch_size=4))
    assert len(only_bad) == 1 and len(only_bad[0]) == 0 and len(only_bad[0].failures) == 1
    assert list(ImageBatcher([], batch_size=4)) == []


def test_bytes_and_arrays_are_items_too():
    data = imf.PHOTOS[0].read_bytes()
    (batch,) = list(ImageBatcher([data, imf.PHOTOS[1]], batch_size=2, threads=1))
    assert batch.paths == ["<item 0>", str(imf.PHOTOS[1])]
    np.testing.assert_array_equal(batch.array[0], preprocess(data))


def test_stopping_early_shuts_the_pool_down():
    batcher = ImageBatcher(imf.PHOTOS * 4, batch_size=2, threads=2)
    it = iter(batcher)
    first = next(it)
    it.close()
    assert len(first) == 2


def test_bad_batch_size():
    with pytest.raises(UserError):
        ImageBatcher(imf.PHOTOS, batch_size=0)
