"""Mixed precision and several devices per trial (`--precision`, `--devices`).

Every policy trains a tiny model on the CPU and exports a bundle with the same
interface (uint8 in, float32 out); the `auto` rule runs on faked device facts;
a trial on two logical CPU devices (a MirroredStrategy) runs in a subprocess,
since logical devices must be set before TensorFlow starts.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import keras_tuner as kt
import numpy as np
import pytest
from conftest import TINY_MODEL

from resnet_tuner import (
    ResNetConfig,
    ResNetHyperModel,
    SearchOptions,
    TrainConfig,
    build_resnet,
    load_bundle,
)
from resnet_tuner import devices as devices_module
from resnet_tuner.config import PRECISIONS
from resnet_tuner.devices import (
    check_devices,
    cpu_flags,
    distribution_strategy,
    parse_devices,
    resolve_precision,
    training_devices,
    training_record,
)
from resnet_tuner.export import export_model
from resnet_tuner.model import precision_of
from resnet_tuner.training import compile_model

CONFIG = ResNetConfig(**TINY_MODEL, flip="horizontal")
COMPUTE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}
#: One fixed tiny model: nothing to search.
FIXED_SPACE = {
    "model": {"stem": "cifar", "stage_depths": [1, 1], "stage_widths": [4, 8]},
    "train": {"batch_size": 8, "learning_rate": 0.01, "epochs": 1},
}


@pytest.fixture(scope="module")
def trained():
    """`trained(policy)`: a tiny model of `policy` after one epoch on 16 images of 8x8,
    trained once per module (16-bit compute is emulated on this CPU, 4 to 10x slower
    than float32: bench/precision.py)."""
    from conftest import separable_images

    done = {}

    def train(policy):
        if policy not in done:
            x, y = separable_images(n=16, size=8)
            model = build_resnet(CONFIG, (8, 8, 3), 3, precision=policy)
            compile_model(model, TrainConfig(learning_rate=0.01), 3)
            history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
            done[policy] = model, history, x, y
        return done[policy]

    return train


@pytest.mark.parametrize("policy", PRECISIONS)
def test_each_policy_trains_with_uint8_in_and_float32_out(policy, trained):
    model, history, x, _ = trained(policy)
    assert keras.config.dtype_policy().name == "float32"  # the build's scope did not leak
    assert np.isfinite(history.history["loss"][0])
    assert precision_of(model) == policy
    assert model.get_layer("stage2_block1_conv1").compute_dtype == COMPUTE[policy]
    assert all(w.dtype == "float32" for w in model.weights)  # master weights stay float32
    assert model.inputs[0].dtype == "uint8" and model.outputs[0].dtype == "float32"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.predict(x[:2], verbose=0).dtype == np.float32
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")  # float16 only: bfloat16 needs no scaling


def test_a_reloaded_float16_model_is_compiled_with_loss_scaling(tmp_path):
    """Keras adds loss scaling from the Model's own policy, which a reloaded model loses."""
    model = build_resnet(CONFIG, (8, 8, 3), 3, precision="mixed_float16")
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert precision_of(reloaded) == "mixed_float16"
    compile_model(reloaded, TrainConfig(), 3)
    assert isinstance(reloaded.optimizer, keras.optimizers.LossScaleOptimizer)


def test_builder_refuses_an_unresolved_or_unknown_policy():
    for bad in ("auto", "float16"):
        with pytest.raises(ValueError, match=rf"precision must be one of .*'{bad}'"):
            build_resnet(CONFIG, (16, 16, 3), 3, precision=bad)
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("policy", [
    pytest.param("mixed_float16", marks=pytest.mark.slow),  # float16 is slow on a CPU
    "mixed_bfloat16",
])
def test_the_bundle_has_the_same_interface_whatever_the_policy(policy, trained, tmp_path):
    import tensorflow as tf

    model, _, x, y = trained(policy)
    path = export_model(model, tmp_path / "best", test=(x, y), model_config=CONFIG,
                        train_config=TrainConfig(), trial={"precision": policy, "replicas": 1})
    config = json.loads((path / "config.json").read_text())
    assert config["precision"] == policy and config["output_dtype"] == "float32"
    assert config["input_dtype"] == "uint8" and config["input_shape"] == [8, 8, 3]
    assert json.loads((path / "metrics.json").read_text())["precision"] == policy
    assert f"- Precision: `{policy}`" in (path / "MODEL_CARD.md").read_text()
    loaded = load_bundle(path)["model"]
    assert loaded.inputs[0].dtype == "uint8" and tuple(loaded.input_shape) == (None, 8, 8, 3)
    assert loaded.outputs[0].dtype == "float32" and precision_of(loaded) == policy
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    served = tf.saved_model.load(str(path / "saved_model"))  # computes in float32
    out = served.serve(tf.constant(x))
    assert out.dtype == tf.float32 and out.shape == (len(x), 3)
    tolerance = 0.05 if policy == "mixed_bfloat16" else 0.01  # 8-bit vs 11-bit mantissas
    np.testing.assert_allclose(out.numpy(), model.predict(x, verbose=0), atol=tolerance)


# --------------------------------------------------------------------------- auto
AUTO = [
    ({"gpus": [(8, 0)], "flags": set()}, "mixed_float16"),  # Ampere: tensor cores
    ({"gpus": [(7, 0), (8, 6)], "flags": set()}, "mixed_float16"),
    ({"gpus": [(6, 1)], "flags": {"avx512_bf16"}}, "float32"),  # Pascal: no tensor cores
    ({"gpus": [(8, 0), (6, 0)], "flags": set()}, "float32"),  # the slowest GPU decides
    ({"gpus": [], "flags": {"avx2", "fma"}}, "float32"),  # this project's EPYC
    ({"gpus": [], "flags": {"avx512f", "avx512_bf16"}}, "mixed_bfloat16"),
    ({"gpus": [], "flags": {"amx_bf16", "amx_tile"}}, "mixed_bfloat16"),
    ({"gpus": [], "flags": {"avx512f", "avx512_vnni"}}, "float32"),  # AVX-512 without bf16
]


@pytest.mark.parametrize("facts, expected", AUTO)
def test_auto_resolves_from_the_devices(facts, expected):
    assert resolve_precision("auto", **facts) == expected


def test_a_named_policy_is_kept_and_an_unknown_one_refused():
    for policy in PRECISIONS:
        assert resolve_precision(policy, gpus=[(8, 0)], flags={"amx_bf16"}) == policy
    with pytest.raises(ValueError, match="precision must be one of .*'half'"):
        resolve_precision("half")


def test_cpu_flags_read_proc_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()


def test_the_hypermodel_resolves_auto_and_builds_with_its_policy(monkeypatch, tmp_path,
                                                                 tiny_images):
    monkeypatch.setattr(devices_module, "gpu_capabilities", lambda: [])
    monkeypatch.setattr(devices_module, "cpu_flags", lambda: {"amx_bf16"})
    hm = ResNetHyperModel(FIXED_SPACE, input_shape=(8, 8, 3), num_classes=3, precision="auto")
    assert hm.precision == "mixed_bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        ResNetHyperModel(FIXED_SPACE, input_shape=(8, 8, 3), num_classes=3, precision="fp16")
    # keras-tuner's own tuner on the Python path
    x, y = tiny_images(n=16, size=8)
    tuner = kt.RandomSearch(hm, objective="val_accuracy", max_trials=1, directory=str(tmp_path))
    tuner.search(x, y, validation_data=(x[:8], y[:8]), verbose=0)
    assert tuner.oracle.get_best_trials(1)[0].status == "COMPLETED"
    assert precision_of(tuner.get_best_models(1)[0]) == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"



@pytest.mark.parametrize("flags, expected", [({"avx512_bf16"}, "mixed_bfloat16"),
                                             ({"avx2"}, "float32")])
def test_the_default_is_auto(monkeypatch, tmp_path, flags, expected):
    """Faster where it is native, float32 elsewhere (bench/throughput.py --accuracy-epochs:
    on AVX512_BF16, 1.16x the images/s and no accuracy lost)."""
    monkeypatch.setattr(devices_module, "gpu_capabilities", lambda: [])
    monkeypatch.setattr(devices_module, "cpu_flags", lambda: flags)
    assert ResNetHyperModel(FIXED_SPACE, input_shape=(8, 8, 3), num_classes=3).precision == expected
    assert SearchOptions("digits", out=str(tmp_path)).precision == "auto"

# --------------------------------------------------------------------------- devices
def test_devices_setting_parses_and_checks():
    import argparse

    assert parse_devices("all") == "all" and parse_devices("2") == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="'all' or a positive integer"):
            parse_devices(bad)
    for good in (None, "all", 1, 4):
        check_devices(good)
    for bad in (0, "some", True, 2.0):
        with pytest.raises(ValueError, match="devices must be 'all' or a positive integer"):
            check_devices(bad)


def test_one_device_means_no_strategy_and_too_many_are_named():
    assert distribution_strategy(None) is None and distribution_strategy(1) is None
    assert distribution_strategy("all") is None  # this process sees one CPU device
    visible = training_devices("all")
    with pytest.raises(ValueError, match=rf"devices={len(visible) + 1} but this machine shows"):
        training_devices(len(visible) + 1)


def test_the_training_record_splits_the_global_batch():
    class FourReplicas:
        num_replicas_in_sync = 4

    assert training_record("mixed_float16", None, 32) == {
        "precision": "mixed_float16", "replicas": 1, "batch_size": 32,
        "batch_size_per_replica": 32}
    assert training_record("float32", FourReplicas(), 32)["batch_size_per_replica"] == 8
    assert training_record("float32", FourReplicas(), 30)["batch_size_per_replica"] == 7.5


TWO_REPLICAS = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from resnet_tuner import SearchOptions, export_best, load_bundle
from resnet_tuner.run.search import run_search

out, space, precision = sys.argv[1:4]
options = SearchOptions("digits", out=out, space=space, tuner="random", max_trials=1,
                        image_size=8, devices=2, precision=precision)
tuner, data = run_search(options, verbose=0)
strategy = tuner.distribution_strategy
model = tuner.get_best_models(1)[0]
bundle = None
if "--export" in sys.argv:
    bundle = load_bundle(export_best(tuner, os.path.join(out, "best"), data))
print(json.dumps({
    "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
    "model_strategy": type(model.distribute_strategy).__name__,
    "status": [t.status for t in tuner.oracle.trials.values()],
    "score": tuner.oracle.get_best_trials(1)[0].score,
    "bundle_output": bundle and str(bundle["model"].outputs[0].dtype),
}))
"""

TWO_REPLICA_SPACE = """
[model]
stem = "cifar"
stage_depths = [1, 1]
base_width = 4

[train]
learning_rate = 0.01
batch_size = 32
epochs = 1
"""


def two_replica_trial(tmp_path, precision="float32", export=False):
    space = tmp_path / "tiny.toml"
    space.write_text(TWO_REPLICA_SPACE)
    script = tmp_path / "two_replicas.py"
    script.write_text(textwrap.dedent(TWO_REPLICAS))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "RESNET_TUNER_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(script), str(out), str(space), precision,
                           *(["--export"] if export else [])],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), out


def test_a_trial_trains_on_two_replicas_and_is_recorded_like_any_other(tmp_path):
    result, out = two_replica_trial(tmp_path)
    assert result["strategy"] == "MirroredStrategy" and result["replicas"] == 2
    assert result["model_strategy"] == "MirroredStrategy"  # built in the strategy's scope
    assert result["status"] == ["COMPLETED"] and 0 <= result["score"] <= 1
    (trial_dir,) = (out / "tuner").glob("trial_*")
    record = json.loads((trial_dir / "history.json").read_text())
    assert record["replicas"] == 2 and record["precision"] == "float32"
    assert record["batch_size"] == 32 and record["batch_size_per_replica"] == 16
    assert len(record["history"]["val_accuracy"]) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["devices"] == 2


@pytest.mark.slow
def test_a_mixed_precision_trial_on_two_replicas_exports_a_float32_bundle(tmp_path):
    result, out = two_replica_trial(tmp_path, precision="mixed_bfloat16", export=True)
    assert result["replicas"] == 2 and result["status"] == ["COMPLETED"]
    assert result["bundle_output"] == "float32"
    hyper = json.loads((out / "best" / "hyperparameters.json").read_text())
    assert hyper["trial"]["replicas"] == 2 and hyper["trial"]["precision"] == "mixed_bfloat16"
    assert hyper["trial"]["batch_size_per_replica"] == 16
    card = (out / "best" / "MODEL_CARD.md").read_text()
    assert "trained on 2 replicas" in card and "global batch 32 (16 per replica)" in card
