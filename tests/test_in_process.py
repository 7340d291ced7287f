"""Searches from a user's own script: every trial trains in one process.

A second model trained in the same process with a smaller last batch crashed
TensorFlow's oneDNN CPU kernels (SIGSEGV / "double free", TF 2.21 on AVX-512;
bench/ragged_batch.py). The fix is that every training batch is full; these
tests pin that, and run a multi-trial in-process search in a child process so
a crash fails the test instead of killing the suite.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SPACE = {
    "model": {
        "stem": "cifar",
        "block": ["bottleneck", "basic"],
        "stage_depths": [3, 4, 6, 3],
        "stage_widths": [8, 16, 32, 64],
        "shortcut": ["B", "A"],
    },
    "augment": {"shift": [0.0, 0.1], "flip": ["horizontal", "none"]},
    "train": {"optimizer": "adam", "learning_rate": [3e-3, 1e-3], "batch_size": 32, "epochs": 1},
}


@pytest.mark.slow  # two 3-4-6-3 ResNets: ~1-4 min on 2 cores
def test_a_multi_trial_search_in_one_process_completes(tmp_path):
    """The reporter's configurations, a ragged image count (301 = 9 x 32 + 13), one process."""
    script = textwrap.dedent(f"""
        import faulthandler, json
        faulthandler.enable()
        import numpy as np, keras_tuner as kt
        from resnet_tuner import ResNetHyperModel
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (301, 32, 32, 3), dtype=np.uint8)
        y = (x[:, :16].mean(axis=(1, 2, 3)) > x[:, 16:].mean(axis=(1, 2, 3))).astype("int32")
        hm = ResNetHyperModel({SPACE!r}, input_shape=(32, 32, 3), num_classes=2)
        tuner = kt.RandomSearch(hm, objective="val_accuracy", max_trials=2, seed=1,
                                directory={str(tmp_path)!r}, project_name="p")
        tuner.search(x, y, validation_data=(x[:45], y[:45]), verbose=0)
        print(json.dumps([t.status for t in tuner.oracle.trials.values()]))
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().splitlines()[-1] == '["COMPLETED", "COMPLETED"]'


def _captured_fit(monkeypatch, hm, x, y=None, **kwargs):
    """Runs `hm.fit` with `model.fit` replaced by a spy; returns what fit was given."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    model = hm.build(hp)
    seen = {}

    def spy(x=None, y=None, **kw):
        seen.update(kw, x=x, y=y)

    monkeypatch.setattr(model, "fit", spy)
    hm.fit(hp, model, x, y, **kwargs)
    return seen


def _batch_sizes(ds) -> list[int]:
    return [int(images.shape[0]) for images, _ in ds]


@pytest.mark.parametrize("images, expected", [(70, [16, 16, 16, 16]), (10, [10])])
def test_numpy_arrays_train_on_full_batches_only(monkeypatch, images, expected):
    from resnet_tuner import ResNetHyperModel

    hm = ResNetHyperModel({"model": {"stage_depths": [1], "stage_widths": [4]},
                           "train": {"batch_size": 16}}, input_shape=(8, 8, 3), num_classes=2)
    x = np.zeros((images, 8, 8, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(images)  # each row's id
    y = (np.arange(images) % 2).astype("int32")
    seen = _captured_fit(monkeypatch, hm, x, y, epochs=1)
    assert seen["y"] is None and "batch_size" not in seen
    assert _batch_sizes(seen["x"]) == expected
    # Every row is a real one, paired with its own label, none twice.
    batches = list(seen["x"])  # one pass: every pass is shuffled anew
    rows = np.concatenate([images[:, 0, 0, 0].numpy() for images, _ in batches])
    labels = np.concatenate([lab.numpy() for _, lab in batches])
    assert len(set(rows.tolist())) == len(rows)
    first_pixels = x[:, 0, 0, 0]
    for row, label in zip(rows, labels, strict=True):
        assert y[int(np.flatnonzero(first_pixels == row)[0])] == label


def test_image_data_and_datasets_train_on_full_batches(monkeypatch):
    import tensorflow as tf

    from resnet_tuner import ResNetHyperModel, datasets

    data = datasets.digits(image_size=(8, 8))
    hm = ResNetHyperModel({"model": {"stage_depths": [1], "stage_widths": [4]},
                           "train": {"batch_size": 32}}, data=data)
    train_count = len(data.labels("train"))
    sizes = _batch_sizes(_captured_fit(monkeypatch, hm, data, epochs=1)["x"])
    assert sizes == [32] * (train_count // 32)
    # A user's own dataset, batched with another size or not batched at all.
    x, y = data.arrays("train")
    for ds in (tf.data.Dataset.from_tensor_slices((x, y)).batch(50),
               tf.data.Dataset.from_tensor_slices((x, y))):
        sizes = _batch_sizes(_captured_fit(monkeypatch, hm, ds, epochs=1)["x"])
        assert sizes == [32] * (len(x) // 32)
