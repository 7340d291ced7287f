"""Shared test settings: quiet TensorFlow, small thread pools, no network."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keep the cache of every test run out of the user's home.
os.environ.setdefault("RESNET_TUNER_CACHE", os.path.join(os.getcwd(), ".pytest_cache", "rt_cache"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test starts from the same environment variables.

    The CLI sets keras-tuner's KERASTUNER_* variables for `--chief` / `--worker`
    (in-process, as a chief's or worker's process needs them); left over, they
    would make the next in-process search a chief that waits for workers.
    `monkeypatch.delenv` of an unset variable would not undo that.
    """
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Each test starts from an empty Keras graph so layer names stay deterministic."""
    import keras

    # free_memory=False: skips the gc.collect() that cost 0.2-0.5 s a test;
    # names reset all the same.
    keras.backend.clear_session(free_memory=False)
    yield


# --------------------------------------------------------------------------- image folders
# Shared by the data tests and any test that needs a small folder of images:
# take the `write_image` / `make_folder` fixtures (or import these functions).


def write_test_image(path, size=(24, 20), value=None, channels=3, dtype=None, ext=None):
    """Writes a small image with OpenCV's encoder through bytes (works for any path).

    `value=None` paints seeded noise; the seed comes from the file's own and its
    folder's names, so the same file has the same pixels on every run.
    """
    import zlib

    import cv2
    import numpy as np

    dtype = dtype or np.uint8
    rng = np.random.default_rng(zlib.crc32(f"{path.parent.name}/{path.name}".encode()))
    h, w = size
    high = 65535 if dtype == np.uint16 else 255
    shape = (h, w) if channels == 1 else (h, w, channels)
    image = rng.integers(0, high, shape).astype(dtype) if value is None else np.full(
        shape, value, dtype
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(ext or path.suffix, image)
    assert ok
    path.write_bytes(buffer.tobytes())
    return path


def make_image_folder(root, classes=("cat", "dog", "fox"), per_class=10, ext=".jpg"):
    """`root/<class>/<class> <i><ext>`, each image one flat colour: `40 * class + i`."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_test_image(root / name / f"{name} {i}{ext}", value=40 * c + i)
    return root


@pytest.fixture
def write_image():
    """`write_image(path, size=(24, 20), value=None, channels=3, dtype=None, ext=None)`."""
    return write_test_image


@pytest.fixture
def make_folder():
    """`make_folder(root, classes=("cat", "dog", "fox"), per_class=10, ext=".jpg")`."""
    return make_image_folder


# --------------------------------------------------------------------------- tiny models
#: The smallest scratch ResNet worth testing: two stages of one block, 3x3 stem.
TINY_MODEL = dict(stage_depths=(1, 1), stage_widths=(4, 8), stem="cifar", stem_width=4)


@pytest.fixture
def tiny_config():
    """`tiny_config(**changes)`: a `ResNetConfig` of `TINY_MODEL` with `changes` applied."""
    from resnet_tuner import ResNetConfig

    def make(**changes):
        return ResNetConfig(**{**TINY_MODEL, **changes})

    return make


def separable_images(num_classes=3, n=48, size=16, seed=0):
    """uint8 images whose class sets their brightness band, labels `arange(n) % num_classes`.

    Separable by mean brightness, so a tiny model learns them in a few steps.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    x = rng.integers(0, 40, (n, size, size, 3)) + (y * (200 // num_classes))[:, None, None, None]
    return x.astype(np.uint8), y


@pytest.fixture
def tiny_images():
    """`tiny_images(num_classes=3, n=48, size=16, seed=0)`: see `separable_images`."""
    return separable_images
