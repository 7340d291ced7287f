"""ImageFolder and datasets.digits: layouts, stratification, bad files, errors, cache."""

import json
import os
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from resnet_tuner import ImageFolder, datasets, load_image
from resnet_tuner.data import store


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_class_folders_split_stratified(tmp_path, cache, make_folder):
    root = make_folder(tmp_path / "pets", per_class=20)
    data = ImageFolder(root, image_size=(16, 16), split=(0.6, 0.2, 0.2), seed=0,
                       cache_dir=cache, verbose=0)
    assert data.class_names == ["cat", "dog", "fox"] and data.num_classes == 3
    for split, fraction in zip(("train", "val", "test"), (0.6, 0.2, 0.2), strict=True):
        for name, n in data.counts[split].items():
            assert abs(n - 20 * fraction) <= 1, (split, name, n)
    x, y = data.arrays("train")
    assert x.shape == (36, 16, 16, 3) and x.dtype == np.uint8
    assert set(y.tolist()) == {0, 1, 2}
    files = [set(data.split_files(s)) for s in ("train", "val", "test")]
    assert not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    assert sum(map(len, files)) == 60
    images, labels = next(iter(data.dataset("train", batch_size=8)))
    assert images.dtype.name == "uint8" and labels.dtype.name == "int32"
    assert tuple(images.shape) == (8, 16, 16, 3)
    assert data.input_shape == (16, 16, 3)


def test_other_seed_gives_other_split_and_same_seed_the_same(tmp_path, cache, make_folder):
    root = make_folder(tmp_path / "pets", per_class=10)
    a = ImageFolder(root, image_size=16, seed=0, cache_dir=cache, verbose=0)
    b = ImageFolder(root, image_size=16, seed=0, cache_dir=cache, verbose=0)
    c = ImageFolder(root, image_size=16, seed=1, cache_dir=cache, verbose=0)
    assert a.split_files("test") == b.split_files("test")
    assert a.split_files("test") != c.split_files("test")


def test_presplit_layout_is_used_as_given(tmp_path, cache, write_image):
    root = tmp_path / "voc"
    for split, n in (("train", 6), ("validation", 2), ("test", 3)):
        for name in ("car", "dog"):
            for i in range(n):
                write_image(root / split / name / f"{i}.png")
    data = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    assert data.split == "given"
    assert data.counts == {"train": {"car": 6, "dog": 6}, "val": {"car": 2, "dog": 2},
                           "test": {"car": 3, "dog": 3}}
    assert all(f.startswith("test") for f in data.split_files("test"))


def test_no_test_split_keeps_every_image_for_train_and_val_stratified(tmp_path, cache,
                                                                     make_folder):
    root = make_folder(tmp_path / "pets", per_class=10)
    data = ImageFolder(root, image_size=16, split=(0.8, 0.2, 0), cache_dir=cache, verbose=0)
    assert data.split == (0.8, 0.2, 0.0)
    assert data.counts["test"] == {"cat": 0, "dog": 0, "fox": 0}
    assert data.counts["val"] == {"cat": 2, "dog": 2, "fox": 2}  # stratified
    assert data.counts["train"] == {"cat": 8, "dog": 8, "fox": 8}
    assert data.arrays("test")[0].shape == (0, 16, 16, 3)
    # A run resumes from its manifest, whose test list is empty.
    again = ImageFolder.from_manifest(data.write_manifest(tmp_path / "manifest.json"),
                                      cache_dir=cache, verbose=0)
    assert again.counts == data.counts
    digits = datasets.digits(image_size=8, split=(0.8, 0.2, 0.0))
    assert len(digits.labels("test")) == 0 and len(digits.labels("val")) == 360


def _presplit(root, write_image, splits=("train", "val", "test")):
    for split in splits:
        for name in ("car", "dog"):
            for i in range(5 if split == "train" else 2):
                write_image(root / split / name / f"{i}.png")
    return root


def test_an_explicit_split_on_a_presplit_folder_is_said_to_be_ignored(tmp_path, cache,
                                                                     write_image):
    import warnings

    from resnet_tuner.data.folder import SplitIgnoredWarning

    root = _presplit(tmp_path / "voc", write_image)
    with pytest.warns(SplitIgnoredWarning) as caught:
        data = ImageFolder(root, image_size=16, split=(0.7, 0.15, 0.15), cache_dir=cache,
                           verbose=0)
    assert [str(w.message) for w in caught] == [
        f"split=(0.7, 0.15, 0.15) ignored: {root} is already split into train/, val/ and "
        "test/ folders, which are used as they are."]
    assert caught[0].filename == __file__  # points at the caller's line
    assert data.counts["test"] == {"car": 2, "dog": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no split given: nothing to say
        ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
        # train/ and val/ only: the fractions decide the test split (here: none).
        two = ImageFolder(_presplit(tmp_path / "two", write_image, ("train", "val")),
                          image_size=16, split=(0.8, 0.2, 0), cache_dir=cache, verbose=0)
    assert two.counts["test"] == {"car": 0, "dog": 0}
    assert two.counts["val"] == {"car": 2, "dog": 2}


def test_presplit_class_missing_from_a_split_is_named(tmp_path, cache, write_image):
    root = tmp_path / "voc"
    for split in ("train", "val", "test"):
        for name in ("car", "dog"):
            if not (split == "val" and name == "dog"):
                write_image(root / split / name / "0.jpg")
    with pytest.raises(ValueError, match=r"\['dog'\] are missing from the 'val' split"):
        ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)


@pytest.mark.skipif(
    not cv2.haveImageWriter("anim.gif"),
    reason=f"writes and loads a GIF; the OpenCV {cv2.__version__} wheels (4.11, the oldest "
    "supported) have no GIF codec, so GIFs are skipped there as not decodable",
)
def test_bad_files_are_skipped_with_reasons_and_one_warning(tmp_path, cache, make_folder,
                                                           write_image):
    root = make_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=6)
    good = (root / "cat" / "cat 0.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "notes.jpg").write_text("this is not an image")
    (root / "cat" / "readme.txt").write_text("hello")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "._cat 1.jpg").write_bytes(b"\0\5\26\7AppleDouble")  # macOS resource fork
    (root / "cat" / "trailer.jpg").write_bytes(good + b"camera trailer after the EOI")
    write_image(root / "cat" / "anim.gif")
    png = write_image(tmp_path / "whole.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(png[: len(png) - 20])
    write_image(root / "dog" / "tiny.png", size=(3, 3))
    write_image(root / "dog" / "alpha.png", channels=4)
    write_image(root / "dog" / "deep.png", dtype=np.uint16)
    write_image(root / "dog" / "gray.png", channels=1)
    write_image(root / "猫" / "咪咪.jpg")
    write_image(root / "猫" / "小 花.jpg")
    write_image(root / "猫" / "三.jpg")
    (root / "loose.jpg").write_bytes(good)
    with pytest.warns(UserWarning, match=r"Skipped 9 file\(s\)") as caught:
        data = ImageFolder(root, image_size=16, split=(0.34, 0.33, 0.33), cache_dir=cache,
                           verbose=0)
    assert len([w for w in caught if "Skipped" in str(w.message)]) == 1
    reasons = {os.path.basename(p): r for p, r in data.skipped}
    assert reasons["truncated.jpg"].startswith("truncated")
    assert reasons["empty.jpg"].startswith("empty file")
    assert reasons["notes.jpg"] == "not a decodable image"
    assert reasons["readme.txt"].startswith("not an image file extension")
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons["._cat 1.jpg"] == "hidden file"
    assert reasons["cut.png"].startswith("truncated")
    assert reasons["tiny.png"].startswith("too small")
    assert reasons["loose.jpg"] == "not in a class folder"
    assert data.class_names == ["cat", "dog", "猫"]
    assert data.counts["train"]["dog"] + data.counts["val"]["dog"] + data.counts["test"][
        "dog"] == 9  # 6 + alpha + 16-bit + gray
    names = {os.path.basename(f) for s in ("train", "val", "test") for f in data.split_files(s)}
    assert {"咪咪.jpg", "小 花.jpg", "alpha.png", "deep.png", "gray.png", "trailer.jpg",
            "anim.gif"} <= names


def test_decoding_converts_every_kind_to_rgb_uint8(tmp_path, write_image):
    alpha = np.zeros((10, 10, 4), np.uint8)  # fully transparent black -> white
    cv2.imwrite(str(tmp_path / "a.png"), alpha)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png", 10), 255)
    deep = np.full((10, 10, 3), 65535, np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    np.testing.assert_array_equal(load_image(tmp_path / "d.png", 10), 255)
    bgr = np.zeros((10, 10, 3), np.uint8)
    bgr[:, :, 0] = 255  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "b.png"), bgr)
    rgb = load_image(tmp_path / "b.png", (4, 6))
    assert rgb.shape == (4, 6, 3) and rgb[0, 0].tolist() == [0, 0, 255]
    gray = load_image(write_image(tmp_path / "g.png", channels=1), (8, 8))
    assert gray.shape == (8, 8, 3)
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_stretch_crop_and_pad_give_different_pixels(tmp_path):
    # 20 x 40: a red quarter, a green half, a blue quarter (left to right).
    red, green, blue = [255, 0, 0], [0, 255, 0], [0, 0, 255]
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :10], image[:, 10:30], image[:, 30:] = red, green, blue
    cv2.imwrite(str(tmp_path / "wide.png"), image[:, :, ::-1])  # OpenCV writes BGR
    out = {mode: load_image(tmp_path / "wide.png", (10, 10), resize=mode)
           for mode in ("stretch", "crop", "pad")}
    stretch, crop, pad = out["stretch"], out["crop"], out["pad"]
    # stretch squeezes all three bands into the square, top to bottom.
    assert (stretch[:, :2] == red).all() and (stretch[:, 4:6] == green).all()
    assert (stretch[:, 8:] == blue).all()
    # crop keeps the aspect ratio and cuts the centre: only the green band is left.
    assert (crop == green).all()
    # pad keeps everything at a quarter scale, letterboxed between black rows.
    assert (pad[:2] == 0).all() and (pad[7:] == 0).all()
    assert (pad[2:7, :2] == red).all() and (pad[2:7, 4:6] == green).all()
    assert (pad[2:7, 8:] == blue).all()


@pytest.mark.parametrize(
    "setup, kwargs, error, message",
    [
        ("missing", {}, FileNotFoundError, "Image folder not found: .*nowhere"),
        ("one_class", {}, ValueError, "needs at least two class subfolders.*only 'cat'"),
        ("no_class", {}, ValueError, "needs at least two class subfolders.*found none"),
        ("empty_class", {}, ValueError, r"Class folder\(s\) \['dog'\] contain no usable images"),
        ("small_class", {}, ValueError,
         r"too few images to split .*\{'dog': 2\}; each class needs at least 10"),
        ("ok", {"split": (0.8, 0.3, 0.1)}, ValueError,
         r"split fractions must sum to 1. Received: split=\(0.8, 0.3, 0.1\)"),
        ("ok", {"split": (1.0, 0.0, 0.0)}, ValueError,
         r"split needs a validation fraction above 0: the search ranks its models by their "
         r"validation accuracy. Received: split=\(1.0, 0.0, 0.0\).*\(0.8, 0.2, 0\)"),
        ("ok", {"split": (0.8, 0, 0.2)}, ValueError, "split needs a validation fraction above 0"),
        ("ok", {"split": (0.0, 0.5, 0.5)}, ValueError,
         r"train and val positive, test positive or 0 .* Received: split=\(0.0, 0.5, 0.5\)"),
        ("small_class", {"split": (0.8, 0.2, 0)}, ValueError,
         r"\{'dog': 2\}; each class needs at least 5 .*change split \(e.g. \(0.5, 0.5, 0\)\)"),
        ("ok", {"image_size": (0, 16)}, ValueError, r"image_size must be .*\(0, 16\)"),
        ("ok", {"resize": "zoom"}, ValueError, "resize must be one of"),
    ],
)
def test_error_messages_name_path_class_and_numbers(tmp_path, cache, setup, kwargs, error,
                                                    message, make_folder, write_image):
    root = tmp_path / "pets"
    if setup == "missing":
        root = tmp_path / "nowhere"
    elif setup == "one_class":
        make_folder(root, classes=("cat",), per_class=3)
    elif setup == "no_class":
        root.mkdir()
        write_image(root / "a.jpg")
    elif setup == "empty_class":
        make_folder(root, classes=("cat",), per_class=10)
        (root / "dog").mkdir()
        (root / "dog" / "broken.jpg").write_bytes(b"")
    elif setup == "small_class":
        make_folder(root, classes=("cat",), per_class=10)
        make_folder(root, classes=("dog",), per_class=2)
    else:
        make_folder(root, per_class=10)
    with pytest.raises(error, match=message):
        ImageFolder(root, cache_dir=cache, verbose=0, **{"image_size": 16, **kwargs})


def test_manifest_round_trip(tmp_path, cache, make_folder, write_image):
    root = make_folder(tmp_path / "pets", per_class=10)
    # Nested folders, and names that sort differently as paths and level by level.
    for name in ("a/x.jpg", "a-b.jpg", "a/b/y.jpg", "Z.jpg"):
        write_image(root / "cat" / name)
    data = ImageFolder(root, image_size=(16, 12), seed=3, cache_dir=cache, verbose=0)
    path = data.write_manifest(tmp_path / "run" / "manifest.json")
    manifest = json.loads(path.read_text())
    assert manifest["image_size"] == [16, 12] and manifest["class_names"] == data.class_names
    again = ImageFolder.from_manifest(path, cache_dir=cache, verbose=0)
    for split in ("train", "val", "test"):
        assert again.split_files(split) == data.split_files(split)
        np.testing.assert_array_equal(again.arrays(split)[0], data.arrays(split)[0])
        np.testing.assert_array_equal(again.labels(split), data.labels(split))
    assert again.manifest()["files"] == manifest["files"]
    # The same decode cache: a run reloaded from its manifest (resume, export) decodes nothing.
    assert again._images == data._images
    assert len(list(cache.glob("images-*"))) == 1
    # A file the first load skipped (it does not decode) is listed as unused: the
    # reload still finds the same cache entry, and says nothing about it again.
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.warns(UserWarning, match="Skipped 1 file"):
        data = ImageFolder(root, image_size=(16, 12), seed=3, cache_dir=cache, verbose=0)
    assert [Path(p).name for p, _ in data.skipped] == ["broken.jpg"]
    path = data.write_manifest(path)
    assert json.loads(path.read_text())["unused"] == [[str(Path("dog/broken.jpg")), "dog"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ImageFolder.from_manifest(path, cache_dir=cache, verbose=0)
    assert again._images == data._images and again.skipped == []
    assert len(list(cache.glob("images-*"))) == 2
    assert again.manifest() == data.manifest()
    os.remove(root / "dog" / "broken.jpg")  # an unused file gone is no reason to fail
    assert ImageFolder.from_manifest(path, cache_dir=cache, verbose=0).split_files("train") \
        == data.split_files("train")
    # A file the manifest needs has gone: say which.
    os.remove(root / data.split_files("test")[0])
    with pytest.raises(FileNotFoundError, match="The manifest lists .* \\(test split\\)"):
        ImageFolder.from_manifest(path, cache_dir=cache, verbose=0)


def test_cache_is_reused_and_invalidated(tmp_path, cache, monkeypatch, make_folder, write_image):
    root = make_folder(tmp_path / "pets", per_class=10)
    first = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    calls = []
    real = store.load_image
    monkeypatch.setattr(store, "load_image",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    second = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    assert calls == []  # warm: nothing decoded
    np.testing.assert_array_equal(first.arrays("train")[0], second.arrays("train")[0])
    ImageFolder(root, image_size=20, cache_dir=cache, verbose=0)
    assert len(calls) == 30  # another size is another cache
    calls.clear()
    time.sleep(0.01)
    write_image(root / "cat" / "cat 0.jpg", value=7)  # modified file
    ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    assert len(calls) == 30
    calls.clear()
    write_image(root / "dog" / "new.jpg")  # added file
    ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    assert len(calls) == 31
    assert len(list(cache.glob("images-*"))) == 4
    assert not list(cache.glob(".images-*"))  # no half-written caches left behind


def test_cache_disabled_keeps_images_in_memory(tmp_path, monkeypatch, make_folder):
    monkeypatch.setenv("RESNET_TUNER_CACHE", str(tmp_path / "default_cache"))
    root = make_folder(tmp_path / "pets", per_class=10)
    data = ImageFolder(root, image_size=16, cache_dir=False, verbose=0)
    assert isinstance(data._images, np.ndarray)
    assert not (tmp_path / "default_cache").exists()  # nothing written anywhere


def test_batches_stream_from_the_cache_file(tmp_path, cache, monkeypatch, make_folder):
    monkeypatch.setattr(store, "IN_MEMORY_BYTES", 0)  # as if larger than memory
    root = make_folder(tmp_path / "pets", per_class=10)
    data = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    assert str(data._images).endswith("images.npy")  # read by row, never loaded whole
    x, y = data.arrays("val")
    streamed_x, streamed_y = zip(*data.dataset("val", batch_size=4), strict=True)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in streamed_x]), x)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in streamed_y]), y)
    epoch1 = np.concatenate([b.numpy() for _, b in data.dataset("train", batch_size=30)])
    epoch2_ds = data.dataset("train", batch_size=30)
    first, second = [np.concatenate([b.numpy() for _, b in epoch2_ds]) for _ in range(2)]
    assert sorted(epoch1) == sorted(first) and not np.array_equal(first, second)
    for images, labels in data.dataset("train", batch_size=7):  # shuffled rows, read by pread
        # make_folder paints class c's images 40 * c + i (i < 10): the value gives the class.
        np.testing.assert_array_equal(images.numpy().mean(axis=(1, 2, 3)) // 40, labels.numpy())


def test_small_splits_are_sliced_in_memory_with_the_same_content(tmp_path, cache, make_folder):
    root = make_folder(tmp_path / "pets", per_class=10)
    data = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    x, y = data.arrays("test")
    batches = list(data.dataset("test", batch_size=4))
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), y)
    assert batches[0][1].dtype.name == "int32"


def test_class_weights_are_balanced(tmp_path, cache, make_folder):
    root = tmp_path / "pets"
    make_folder(root, classes=("cat",), per_class=30)
    make_folder(root, classes=("dog",), per_class=10)
    data = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    weights = data.class_weights()
    n = len(data.labels("train"))
    for c, count in enumerate(np.bincount(data.labels("train"))):
        assert weights[c] == pytest.approx(n / (2 * count))


def test_folds_are_stratified_and_leave_test_alone(tmp_path, cache, make_folder):
    root = make_folder(tmp_path / "pets", per_class=20)
    data = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    folds = list(data.folds(3))
    assert len(folds) == 3
    seen_val = []
    for fold in folds:
        assert fold.split_files("test") == data.split_files("test")
        assert set(fold.counts["val"].values()) <= {5, 6}
        seen_val += fold.split_files("val")
    assert sorted(seen_val) == sorted(data.split_files("train") + data.split_files("val"))
    with pytest.raises(ValueError, match="folds needs an integer k from 2 to 18"):
        list(data.folds(40))


def test_digits_is_a_real_stratified_dataset():
    data = datasets.digits(image_size=(32, 32), seed=0)
    assert data.class_names == [str(i) for i in range(10)]
    sizes = {s: len(data.labels(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 1437, "val": 180, "test": 180}
    assert all(n == 18 for n in data.counts["test"].values())
    x, _ = data.arrays("test")
    assert x.shape == (180, 32, 32, 3) and x.dtype == np.uint8 and x.max() > 200


def test_presplit_without_val_splits_val_off_train_stratified(tmp_path, cache, write_image):
    root = tmp_path / "kaggle"
    for split, n in (("train", 10), ("test", 3)):
        for name in ("car", "dog"):
            for i in range(n):
                write_image(root / split / name / f"{i}.png")
    data = ImageFolder(root, image_size=16, split=(0.8, 0.1, 0.1), cache_dir=cache, verbose=0)
    assert data.counts["test"] == {"car": 3, "dog": 3}
    assert all(f.startswith("test") for f in data.split_files("test"))
    assert all(f.startswith("train") for f in data.split_files("val"))
    # val is 0.1 / (0.8 + 0.1) of each class's train images, within one image.
    assert all(abs(n - 10 / 9) <= 1 and n >= 1 for n in data.counts["val"].values())
    assert data.counts["train"]["car"] + data.counts["val"]["car"] == 10
    # Reloaded from its manifest (val files under train/): the same splits, the same cache.
    again = ImageFolder.from_manifest(data.write_manifest(tmp_path / "manifest.json"),
                                      cache_dir=cache, verbose=0)
    assert all(again.split_files(s) == data.split_files(s) for s in ("train", "val", "test"))
    assert again._images == data._images and len(list(cache.glob("images-*"))) == 1


def test_large_jpeg_is_decoded_reduced_like_a_full_decode(tmp_path):
    y, x = np.mgrid[0:600, 0:800]
    photo = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    path.write_bytes(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    fast = load_image(path, (64, 48)).astype(float)  # DCT reduction by 8 then area
    full = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    exact = cv2.resize(full, (48, 64), interpolation=cv2.INTER_AREA).astype(float)
    assert fast.shape == (64, 48, 3)
    assert np.abs(fast - exact).mean() < 4


def test_interrupted_decode_publishes_no_cache(tmp_path, cache, monkeypatch, make_folder):
    root = make_folder(tmp_path / "pets", per_class=10)
    real, calls = store.load_image, []

    def load_then_die(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 12:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of a cold decode
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "load_image", load_then_die)
    with pytest.raises(KeyboardInterrupt):
        ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    # Neither a cache entry (which the next load would trust) nor a temporary folder is left.
    assert list(cache.iterdir()) == []
    monkeypatch.setattr(store, "load_image", real)
    again = ImageFolder(root, image_size=16, cache_dir=cache, verbose=0)
    fresh = ImageFolder(root, image_size=16, cache_dir=False, verbose=0)
    np.testing.assert_array_equal(again.arrays("train")[0], fresh.arrays("train")[0])
    assert again.skipped == [] and len(again.labels("train")) == 24


def test_rare_class_is_in_every_split(tmp_path, cache, make_folder):
    # 45 common images and 5 rare ones: a plain random split with this seed
    # leaves the rare class out of val or test; the stratified one cannot.
    root = tmp_path / "cells"
    make_folder(root, classes=("common",), per_class=45, ext=".png")
    make_folder(root, classes=("rare",), per_class=5, ext=".png")
    data = ImageFolder(root, image_size=8, split=(0.6, 0.2, 0.2), seed=0, cache_dir=cache,
                       verbose=0)
    assert data.counts == {"train": {"common": 27, "rare": 3}, "val": {"common": 9, "rare": 1},
                           "test": {"common": 9, "rare": 1}}


def test_dataset_rejects_bad_batch_size_and_split(tmp_path, cache, make_folder):
    data = ImageFolder(make_folder(tmp_path / "pets"), image_size=16, cache_dir=cache, verbose=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer. Received: 0"):
        data.dataset("train", batch_size=0)
    with pytest.raises(ValueError, match="split must be one of .* Received: split='valid'"):
        data.arrays("valid")
