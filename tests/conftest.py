"""Shared test settings: quiet TensorFlow, small thread pools, no network."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Keep the cache of every test run out of the user's home.
os.environ.setdefault("RESNET_TUNER_CACHE", os.path.join(os.getcwd(), ".pytest_cache", "rt_cache"))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Each test starts from an empty Keras graph so layer names stay deterministic."""
    import keras

    # free_memory=False: skips the gc.collect() that cost 0.2-0.5 s a test;
    # names reset all the same.
    keras.backend.clear_session(free_memory=False)
    yield
