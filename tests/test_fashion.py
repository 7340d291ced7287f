"""`resnet_tuner.datasets.fashion_mnist()`, its idx reader and the CLI name `fashion-mnist`.

Every test writes its own small idx files; none needs Debian's package, Keras'
cache or the network (an autouse fixture hides all three), except the one
`slow` test of the real files, skipped where they are not installed.
"""

import gzip
import json
import os
import struct
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from resnet_tuner import datasets
from resnet_tuner.data import SplitIgnoredWarning
from resnet_tuner.data import datasets as ds
from resnet_tuner.data import fashion as fm
from resnet_tuner.run import rundir
from resnet_tuner.run.options import DATASETS, SearchOptions

NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
         "Bag", "Ankle boot"]
TRAIN_PER_CLASS, TEST_PER_CLASS = 12, 3
CODES = {np.dtype("uint8"): 0x08, np.dtype("int8"): 0x09, np.dtype(">i2"): 0x0B,
         np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, CODES[big.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    data = idx_bytes(array)
    gz = path.name.endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_fashion(folder: Path, gz: bool = True, seed: int = 0, per_class=TRAIN_PER_CLASS,
                 test_per_class=TEST_PER_CLASS) -> dict[str, np.ndarray]:
    """Four small idx files in `folder`: random pixels, shuffled labels, 10 classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for stem, n in (("train", per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), n))
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels)
        arrays[stem] = (images, labels)
    return arrays


class NetworkDisabled(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def no_sources(monkeypatch, tmp_path):
    """No env var, no Debian folder, an empty Keras cache, and no download."""
    monkeypatch.delenv(fm.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(fm, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    cache = tmp_path / "keras-home" / "datasets" / "fashion-mnist"
    monkeypatch.setattr(fm, "keras_cache_dirs", lambda: [cache])

    def download():
        raise NetworkDisabled("the tests do not download")

    monkeypatch.setattr(fm, "_keras_download", download)
    return cache


@pytest.fixture
def fashion_dir(tmp_path):
    folder = tmp_path / "fashion"
    return folder, make_fashion(folder)


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", ["uint8", "int8", ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_every_type_gz_or_plain(tmp_path, gz, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    got = datasets.read_idx(write_idx(tmp_path / "a.idx", array, gz=gz))
    np.testing.assert_array_equal(got, array)
    assert got.dtype == np.dtype(dtype).newbyteorder("=") and got.dtype.isnative
    assert not got.flags.writeable  # shared by the per-process cache


def test_read_idx_is_cached_until_the_file_changes(tmp_path):
    path = write_idx(tmp_path / "a.idx.gz", np.arange(10, dtype=np.uint8))
    first = datasets.read_idx(path)
    assert datasets.read_idx(str(path)) is first
    write_idx(path, np.arange(12, dtype=np.uint8))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert len(datasets.read_idx(path)) == 12


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x00\x00\x08", "is not an idx file: its magic number is 00 00 08"),
        (b"\x01\x02\x08\x01" + b"\0" * 8, "is not an idx file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "is not an idx file"),  # unknown type byte
        (b"\x00\x00\x08\x00", "is not an idx file"),  # no dimensions
        (b"", "magic number is missing"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "is truncated: its header announces 3 dim"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03abc",
         "is truncated: its header says 2 x 3 values of uint8 \\(6 bytes\\) but 3 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "has a size mismatch: .* but 3 bytes"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_errors_name_the_file(tmp_path, content, match, gz):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=match) as err:
        datasets.read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))[:-30])
    with pytest.raises(ValueError, match=f"{path} is a damaged or truncated gzip file"):
        datasets.read_idx(path)


# --------------------------------------------------------------------------- fashion_mnist


@pytest.mark.parametrize("gz", [True, False])
def test_shapes_classes_and_the_official_test_split(tmp_path, gz):
    folder = tmp_path / "f"
    arrays = make_fashion(folder, gz=gz)
    data = datasets.fashion_mnist(path=folder)
    assert data.class_names == NAMES == list(datasets.FASHION_MNIST_CLASSES)
    assert data.image_size == (28, 28) and data.input_shape == (28, 28, 3)
    assert data.root == str(folder)
    x, y = data.arrays("test")
    test_images, test_labels = arrays["t10k"]
    # The test split is the t10k file, exactly, in its order, gray over three channels.
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape == (30, 28, 28, 3)
    np.testing.assert_array_equal(y, test_labels)
    for c in range(3):
        np.testing.assert_array_equal(x[..., c], test_images)
    assert data.split_files("test") == [f"fashion-mnist/test/{i:05d}" for i in range(30)]
    # val and train come from the train file only, and every class is in every split.
    train_images, train_labels = arrays["train"]
    for split, n in (("train", 108), ("val", 12)):
        xs, ys = data.arrays(split)
        assert xs.shape == (n, 28, 28, 3) and len(ys) == n
        rows = [int(f.rsplit("/", 1)[1]) for f in data.split_files(split)]
        assert all(f.startswith("fashion-mnist/train/") for f in data.split_files(split))
        np.testing.assert_array_equal(xs[..., 1], train_images[rows])
        np.testing.assert_array_equal(ys, train_labels[rows])
    assert all(min(data.counts[s].values()) >= 1 for s in ("train", "val"))  # stratified
    assert set(data.counts["test"].values()) == {3}
    assert not set(data.split_files("train")) & set(data.split_files("val"))
    batch_x, batch_y = next(iter(data.dataset("val", batch_size=4)))
    assert tuple(batch_x.shape) == (4, 28, 28, 3) and batch_x.dtype.name == "uint8"


def test_val_fraction_is_stratified_and_seeded(fashion_dir):
    folder, _ = fashion_dir
    data = datasets.fashion_mnist(path=folder, val_fraction=0.25, seed=3)
    assert set(data.counts["val"].values()) == {3} and set(data.counts["train"].values()) == {9}
    again = datasets.fashion_mnist(path=folder, val_fraction=0.25, seed=3)
    other = datasets.fashion_mnist(path=folder, val_fraction=0.25, seed=4)
    assert again.split_files("val") == data.split_files("val") != other.split_files("val")
    assert other.split_files("test") == data.split_files("test")


def test_classes_are_kept_and_relabelled_in_the_given_order(fashion_dir):
    folder, arrays = fashion_dir
    data = datasets.fashion_mnist(path=folder, classes=[9, 5, 7])
    assert data.class_names == ["Ankle boot", "Sandal", "Sneaker"] and data.num_classes == 3
    _, test_labels = arrays["t10k"]
    kept = np.flatnonzero(np.isin(test_labels, [9, 5, 7]))
    assert data.split_files("test") == [f"fashion-mnist/test/{i:05d}" for i in kept]
    np.testing.assert_array_equal(data.labels("test"),
                                  [{9: 0, 5: 1, 7: 2}[int(c)] for c in test_labels[kept]])
    assert sum(data.counts["train"].values()) + sum(data.counts["val"].values()) == 36
    names = datasets.fashion_mnist(path=folder, classes=("Bag", "Trouser"))
    assert names.class_names == ["Bag", "Trouser"]


def test_train_per_class_draws_from_train_only(fashion_dir):
    folder, _ = fashion_dir
    full = datasets.fashion_mnist(path=folder, seed=1)
    few = datasets.fashion_mnist(path=folder, seed=1, train_per_class=4)
    assert set(few.counts["train"].values()) == {4}
    assert set(few.split_files("train")) < set(full.split_files("train"))
    assert few.split_files("val") == full.split_files("val")
    assert few.split_files("test") == full.split_files("test")
    np.testing.assert_array_equal(few.arrays("val")[0], full.arrays("val")[0])
    both = datasets.fashion_mnist(path=folder, seed=1, train_per_class=2, classes=[5, 6])
    assert both.counts["train"] == {"Sandal": 2, "Shirt": 2}


def test_image_size_resizes_with_opencv(fashion_dir):
    folder, arrays = fashion_dir
    data = datasets.fashion_mnist(path=folder, image_size=(32, 40))
    x, _ = data.arrays("test")
    assert x.shape == (30, 32, 40, 3) and data.image_size == (32, 40)
    from resnet_tuner.data.decode import _resize_to

    expected = _resize_to(arrays["t10k"][0][0], (40, 32))
    np.testing.assert_array_equal(x[0, :, :, 2], expected)
    assert datasets.fashion_mnist(path=folder, image_size=14).arrays("val")[0].shape[1:] == (
        14, 14, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size must be"),
        ({"val_fraction": 0}, "val_fraction must be a number above 0 and below 1"),
        ({"val_fraction": 1.0}, "val_fraction must be"),
        ({"val_fraction": "0.1"}, "val_fraction must be"),
        ({"val_fraction": True}, "val_fraction must be"),
        ({"val_fraction": 0.01}, "Cannot hold out val_fraction=0.01 .* too few images"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"classes": [5]}, "at least two different"),
        ({"classes": [5, 5]}, "at least two different"),
        ({"classes": [5, 10]}, "at least two different"),
        ({"classes": "Bag"}, "at least two different"),
        ({"classes": ["Bag", "Hat"]}, "Received: classes=\\['Bag', 'Hat'\\]"),
        ({"train_per_class": 0}, "train_per_class must be a positive integer"),
        ({"train_per_class": 12}, "train_per_class=12 is more than the 1[01] training images"),
        ({"path": 3}, "path must be a folder"),
    ],
)
def test_bad_arguments(fashion_dir, kwargs, match):
    folder, _ = fashion_dir
    with pytest.raises(ValueError, match=match):
        datasets.fashion_mnist(**{"path": folder, **kwargs})


def test_count_mismatch_and_bad_labels_name_the_files(tmp_path):
    folder = tmp_path / "f"
    make_fashion(folder)
    labels = folder / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(119, np.uint8))
    with pytest.raises(ValueError, match=f"{labels} holds 119 labels but .*train-images"):
        datasets.fashion_mnist(path=folder)
    write_idx(labels, np.full(120, 10, np.uint8))
    with pytest.raises(ValueError, match="label 10 \\(at index 0\\) is out of range"):
        datasets.fashion_mnist(path=folder)
    write_idx(labels, np.zeros(120, np.int32))  # wrong type
    with pytest.raises(ValueError, match="does not hold Fashion-MNIST labels"):
        datasets.fashion_mnist(path=folder)
    make_fashion(folder)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((30, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="t10k-images.* does not hold Fashion-MNIST images"):
        datasets.fashion_mnist(path=folder)
    make_fashion(folder, test_per_class=1)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    with pytest.raises(ValueError, match="test file .* has no images of class"):
        datasets.fashion_mnist(path=folder)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"\x00\x00\x08\x03")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is truncated"):
        datasets.fashion_mnist(path=folder)


def three_ways(text: str) -> bool:
    return ("apt-get install dataset-fashion-mnist" in text and "fashion_mnist(path=" in text
            and fm.FASHION_MNIST_ENV in text and "go online" in text
            and "keras.datasets.fashion_mnist.load_data()" in text)


def test_nothing_found_names_the_three_ways_and_what_failed(monkeypatch, tmp_path, no_sources):
    import keras

    def offline():
        raise OSError("URL fetch failure: no network")

    # The real download function, with Keras' own loader failing as offline.
    monkeypatch.setattr(fm, "_keras_download", _real_keras_download)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", offline)
    with pytest.raises(FileNotFoundError) as err:
        datasets.fashion_mnist()
    text = str(err.value)
    assert three_ways(text)
    assert f"Debian's dataset-fashion-mnist {tmp_path / 'no-debian'}: no such folder" in text
    assert f"Keras' cache {no_sources}: no such folder" in text
    assert "load_data(): OSError: URL fetch failure: no network" in text


_real_keras_download = fm._keras_download


def test_sources_in_order(monkeypatch, tmp_path, no_sources):
    import keras

    env, debian = tmp_path / "env", tmp_path / "no-debian"
    make_fashion(no_sources, gz=True, seed=1)  # Keras' cache
    assert datasets.fashion_mnist().root == str(no_sources)
    make_fashion(debian, gz=False, seed=2)
    assert datasets.fashion_mnist().root == str(debian)
    make_fashion(env, seed=3)
    monkeypatch.setenv(fm.FASHION_MNIST_ENV, str(env))
    assert datasets.fashion_mnist().root == str(env)
    given = tmp_path / "given"
    make_fashion(given, seed=4)
    assert datasets.fashion_mnist(path=given).root == str(given)
    # A folder named by path= or the variable must hold the files: no silent fallback.
    with pytest.raises(FileNotFoundError, match="path= .*nowhere: not a folder") as err:
        datasets.fashion_mnist(path=tmp_path / "nowhere")
    assert three_ways(str(err.value))
    (given / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="path= .*given: no t10k-labels-idx1-ubyte"):
        datasets.fashion_mnist(path=given)
    monkeypatch.setenv(fm.FASHION_MNIST_ENV, str(given))
    with pytest.raises(FileNotFoundError, match=f"\\${fm.FASHION_MNIST_ENV} .*given: no t10k"):
        datasets.fashion_mnist()
    # Found nowhere on disk: Keras downloads (here: a stand-in for load_data()).
    monkeypatch.delenv(fm.FASHION_MNIST_ENV)
    for folder in (no_sources, debian):
        for f in folder.iterdir():
            f.unlink()
    arrays = make_fashion(tmp_path / "download", seed=5)
    downloaded = ((arrays["train"]), (arrays["t10k"]))
    monkeypatch.setattr(fm, "_keras_download", _real_keras_download)
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: downloaded)
    data = datasets.fashion_mnist()
    assert data.root == "keras.datasets.fashion_mnist"
    np.testing.assert_array_equal(data.labels("test"), arrays["t10k"][1])


def test_dotted_and_unpacked_file_names(tmp_path):
    folder = tmp_path / "f"
    make_fashion(folder, gz=False)
    for f in folder.iterdir():
        f.rename(folder / f.name.replace("-idx", ".idx"))
    assert datasets.fashion_mnist(path=folder).num_classes == 10


def test_keras_cache_dirs_follow_keras_home(monkeypatch, tmp_path):
    monkeypatch.undo()  # the real function, not the fixture's stand-in
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert fm.keras_cache_dirs()[0] == tmp_path / "kh" / "datasets" / "fashion-mnist"


# --------------------------------------------------------------------------- by name, CLI


def test_dataset_names_match_the_options_table():
    assert tuple(DATASETS) == ds.NAMED_DATASETS == ("digits", "fashion-mnist")


def test_search_options_accept_fashion_mnist(tmp_path):
    options = SearchOptions(data_dir="fashion-mnist", out=str(tmp_path / "run"))
    options.validate()  # no folder of that name needed
    with pytest.raises(FileNotFoundError, match="'fashion-mnist' for Fashion-MNIST"):
        SearchOptions(data_dir=str(tmp_path / "nope"), out="x").validate()


def test_load_data_reads_fashion_mnist_and_resumes_the_same_split(monkeypatch, tmp_path,
                                                                  fashion_dir):
    folder, arrays = fashion_dir
    monkeypatch.setenv(fm.FASHION_MNIST_ENV, str(folder))
    run_dir = tmp_path / "run"
    options = SearchOptions(data_dir="fashion-mnist", out=str(run_dir), image_size=28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default split: nothing to warn about
        data = rundir.load_data(options, run_dir, verbose=0)
    assert data.class_names == NAMES and len(data.labels("val")) == 12
    np.testing.assert_array_equal(data.labels("test"), arrays["t10k"][1])
    data.write_manifest(run_dir / rundir.MANIFEST_FILE)  # as prepare_run does
    again = rundir.load_data(options, run_dir, verbose=0)
    assert again.manifest()["files"] == data.manifest()["files"]
    # The resumed split is the manifest's, even if the split would now come out otherwise.
    manifest = json.loads((run_dir / rundir.MANIFEST_FILE).read_text())
    moved = manifest["files"]["train"].pop(0)
    manifest["files"]["val"].append(moved)
    (run_dir / rundir.MANIFEST_FILE).write_text(json.dumps(manifest))
    resumed = rundir.load_data(options, run_dir, verbose=0)
    assert moved[0] in resumed.split_files("val") and len(resumed.labels("val")) == 13
    # A manifest the data no longer matches is refused.
    manifest["files"]["val"].append(["fashion-mnist/train/99999", "Bag"])
    (run_dir / rundir.MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="does not match the fashion-mnist dataset"):
        rundir.load_data(options, run_dir, verbose=0)
    overwrite = SearchOptions(data_dir="fashion-mnist", out=str(run_dir), image_size=16,
                              overwrite=True)
    assert rundir.load_data(overwrite, run_dir, verbose=0).image_size == (16, 16)


def test_a_split_says_its_test_fraction_is_ignored(monkeypatch, tmp_path, fashion_dir):
    folder, _ = fashion_dir
    monkeypatch.setenv(fm.FASHION_MNIST_ENV, str(folder))
    options = SearchOptions(data_dir="fashion-mnist", out=str(tmp_path / "run"), image_size=28,
                            split=(0.5, 0.25, 0.25))
    with pytest.warns(SplitIgnoredWarning, match="The test fraction of --split 0.5,0.25,0.25 "
                      "ignored: .* val is 0.333 of its 60,000") as record:
        data = rundir.load_data(options, tmp_path / "run", verbose=0)
    assert len(record) == 1
    assert set(data.counts["val"].values()) == {4} and len(data.labels("test")) == 30
    data.write_manifest(tmp_path / "run" / rundir.MANIFEST_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: not again when the run resumes
        rundir.load_data(options, tmp_path / "run", verbose=0)


def test_prepare_run_writes_the_manifest(monkeypatch, tmp_path, fashion_dir):
    from resnet_tuner.run import search

    class Space:
        source = "stub"

        def to_dict(self):
            return {}

    folder, _ = fashion_dir
    monkeypatch.setenv(fm.FASHION_MNIST_ENV, str(folder))
    monkeypatch.setattr(search, "search_space", lambda options: Space())
    options = SearchOptions(data_dir="fashion-mnist", out=str(tmp_path / "run"), image_size=28)
    _, data = search.prepare_run(options, verbose=0, summary=False)
    manifest = json.loads((tmp_path / "run" / rundir.MANIFEST_FILE).read_text())
    assert manifest["class_names"] == NAMES
    assert [f for f, _ in manifest["files"]["test"]] == data.split_files("test")
    record = json.loads((tmp_path / "run" / rundir.RUN_FILE).read_text())
    assert record["class_names"] == NAMES


def test_named_digits_resumes_from_its_manifest(tmp_path):
    data = ds.named_dataset("digits", (8, 8), (0.8, 0.1, 0.1), 0)
    path = data.write_manifest(tmp_path / "m.json")
    again = ds.named_dataset("digits", (8, 8), (0.8, 0.1, 0.1), 0, manifest=path)
    assert again.manifest()["files"] == data.manifest()["files"]
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
        ds.named_dataset("mnist", 8)


# --------------------------------------------------------------------------- the real files

REAL = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_the_real_files_load():
    data = datasets.fashion_mnist(path=REAL)
    sizes = {s: len(data.labels(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 54_000, "val": 6_000, "test": 10_000}
    assert set(data.counts["test"].values()) == {1000} and set(data.counts["val"].values()) == {600}
    few = datasets.fashion_mnist(path=REAL, classes=[5, 6, 7, 8, 9], train_per_class=20)
    assert sum(few.counts["train"].values()) == 100 and len(few.labels("test")) == 5000
