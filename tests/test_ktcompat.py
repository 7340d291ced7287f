"""Contract tests: one per keras-tuner internal that resnet_tuner.run.ktcompat uses.

Each fails with a message naming the internal and what to do, so a keras-tuner
release that changes one is caught here rather than in the middle of a search.
No training: oracles draw values, tuners are built around a tiny model.
"""

import inspect
import threading
import time

import keras
import keras_tuner as kt
import pytest

from resnet_tuner.run import ktcompat
from resnet_tuner.run import tuners as ours

KT_VERSION = kt.__version__


def _broken(internal: str) -> str:
    return (f"keras-tuner {KT_VERSION} changed {internal}, which resnet_tuner/run/ktcompat.py "
            "relies on: adapt ktcompat (and this contract), or pin keras-tuner below this "
            "version in pyproject.toml.")


def space() -> kt.HyperParameters:
    hp = kt.HyperParameters()
    hp.Int("units", 1, 1000, default=500)
    hp.Choice("activation", ["relu", "tanh"], default="relu")
    return hp


def oracle_of(cls, tmp_path, **kwargs):
    oracle = cls(objective="val_loss", hyperparameters=space(), seed=1, **kwargs)
    oracle._set_project_dir(str(tmp_path), "project")  # what a Tuner does with its oracle
    return oracle


def build(hp):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(hp.Int("units", 1, 4))])
    model.compile(loss="mse")
    return model


def tuned(values):
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


ORACLES = {
    "random": kt.oracles.RandomSearchOracle,
    "hyperband": kt.oracles.HyperbandOracle,
    "bayesian": kt.oracles.BayesianOptimizationOracle,
}


@pytest.mark.parametrize("kind", sorted(ORACLES))
def test_every_random_candidate_is_drawn_through_random_values(kind, tmp_path):
    class Initial(ktcompat.InitialFirst, ORACLES[kind]):
        pass

    wanted = {"units": 777}
    oracle = oracle_of(Initial, tmp_path, initial=[wanted])
    first = oracle.create_trial("a").hyperparameters.values
    assert tuned(first) == {"units": 777, "activation": "relu"}, _broken(
        f"{ORACLES[kind].__name__}.populate_space: it no longer draws its random candidates "
        "through Oracle._random_values()")
    second = oracle.create_trial("b").hyperparameters.values
    assert tuned(second) != tuned(first), _broken("Oracle._duplicate(values)")


def test_duplicate_tells_tried_values(tmp_path):
    oracle = oracle_of(kt.oracles.RandomSearchOracle, tmp_path)
    values = oracle.create_trial("a").hyperparameters.values
    assert oracle._duplicate(dict(values)) is True, _broken("Oracle._duplicate(values)")
    assert oracle._duplicate({"units": -1, "activation": "x"}) is False, _broken(
        "Oracle._duplicate(values)")


PAIRS = [(ours.RandomSearch, kt.RandomSearch), (ours.Hyperband, kt.Hyperband),
         (ours.BayesianOptimization, kt.BayesianOptimization), (ours.GridSearch, kt.GridSearch)]


@pytest.mark.parametrize("mine, builtin", PAIRS, ids=[p[1].__name__ for p in PAIRS])
def test_declared_tuners_mirror_keras_tuners_constructor(mine, builtin, tmp_path):
    """Ours take keras-tuner's arguments (same names and defaults) and build the same oracle."""
    theirs = inspect.signature(builtin.__init__).parameters
    mine_params = inspect.signature(mine.__init__).parameters
    for name, parameter in theirs.items():
        assert name in mine_params, _broken(f"{builtin.__name__}.__init__ (new argument {name})")
        assert mine_params[name].default == parameter.default, _broken(
            f"{builtin.__name__}.__init__ (default of {name})")
    kwargs = {"objective": "val_loss", "max_trials": 3, "seed": 4}
    if builtin is kt.Hyperband:
        kwargs = {"objective": "val_loss", "max_epochs": 5, "factor": 2, "seed": 4}
    a = builtin(build, directory=str(tmp_path / "kt"), **kwargs)
    b = mine(build, directory=str(tmp_path / "ours"), **kwargs)
    assert isinstance(b.oracle, type(a.oracle))
    assert b.oracle.get_state() == a.oracle.get_state(), _broken(
        f"{builtin.__name__}.__init__: it does more than build its oracle, so "
        "init_tuner_with_oracle skips part of it")
    assert set(vars(a)) <= set(vars(b)), _broken(f"{builtin.__name__}.__init__ attributes")


def test_is_worker_reads_the_distribution_variables(tmp_path, monkeypatch):
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        monkeypatch.delenv(name, raising=False)
    tuner = kt.RandomSearch(build, objective="val_loss", max_trials=1, directory=str(tmp_path))
    assert ktcompat.is_worker(tuner) is False, _broken("BaseTuner._is_worker()")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "w1")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    assert ktcompat.is_worker(tuner) is True, _broken("BaseTuner._is_worker()")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert ktcompat.is_worker(tuner) is False, _broken("BaseTuner._is_worker()")


def test_a_requeued_trial_goes_to_the_next_tuner_that_asks(tmp_path):
    import json

    oracle = oracle_of(kt.oracles.RandomSearchOracle, tmp_path)
    trial = oracle.create_trial("w1")
    assert ktcompat.requeue(oracle, "w2", trial, "not w2's") is False
    assert ktcompat.requeue(oracle, "w1", trial, "worker w1 stopped answering") is True
    saved = json.loads((tmp_path / "project" / f"trial_{trial.trial_id}" / "trial.json")
                       .read_text())
    assert saved["status"] == "INVALID" and "w1 stopped" in saved["message"], _broken(
        "Oracle._save_trial(trial)")
    assert not ktcompat.nothing_left(oracle), _broken("Oracle._retry_queue")
    again = oracle.create_trial("w2")
    assert again.trial_id == trial.trial_id, _broken(
        "Oracle._retry_queue (create_trial no longer takes queued trials first)")
    assert again.status == ktcompat.TrialStatus.RUNNING
    oracle.update_trial(again.trial_id, {"val_loss": 1.0})
    again.status = ktcompat.TrialStatus.COMPLETED
    oracle.end_trial(again)
    assert oracle.end_order == [again.trial_id], _broken("Oracle.end_order (progress lines)")
    assert oracle.tuner_ids == {"w2"}, _broken("Oracle.tuner_ids")
    oracle.tuner_ids.discard("w2")
    assert ktcompat.nothing_left(oracle), _broken("Oracle.ongoing_trials / tuner_ids")


def test_the_rpc_timeout_is_a_module_global_of_the_client(monkeypatch):
    from keras_tuner.src.distribute import oracle_client

    assert isinstance(oracle_client.TIMEOUT, (int, float)), _broken("oracle_client.TIMEOUT")
    assert "timeout=TIMEOUT" in inspect.getsource(oracle_client.OracleClient), _broken(
        "oracle_client.TIMEOUT (OracleClient no longer reads it on each call)")
    monkeypatch.setattr(oracle_client, "TIMEOUT", oracle_client.TIMEOUT)  # restored after
    ktcompat.set_rpc_timeout(7.0)
    assert oracle_client.TIMEOUT == 7.0


def test_heartbeat_asks_for_the_trial_through_the_clients_stub(monkeypatch, tmp_path):
    from keras_tuner.src.distribute import oracle_client

    monkeypatch.setenv("KERASTUNER_TUNER_ID", "w1")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    client = oracle_client.OracleClient(oracle_of(kt.oracles.RandomSearchOracle, tmp_path))
    assert hasattr(client.stub, "GetTrial"), _broken("OracleClient.stub")
    calls = []

    class Stub:
        def GetTrial(self, request, timeout):  # noqa: N802
            calls.append((request.trial_id, timeout))

    client.stub = Stub()
    ktcompat.send_heartbeat(client, "03", timeout=9.0)
    assert calls == [("03", 9.0)], _broken("protos GetTrialRequest")


def test_the_servicer_base_and_its_protos(tmp_path):
    from concurrent import futures

    import grpc

    oracle = oracle_of(kt.oracles.RandomSearchOracle, tmp_path)
    servicer = ktcompat.servicer_base()(oracle)
    assert servicer.oracle is oracle and servicer.stop_triggered is False, _broken(
        "OracleServicer(oracle) attributes")
    for method in ("CreateTrial", "UpdateTrial", "GetTrial"):
        assert callable(getattr(servicer, method, None)), _broken(f"OracleServicer.{method}")
    trial = oracle.create_trial("w1")
    assert ktcompat.create_trial_response(trial).trial.trial_id == trial.trial_id, _broken(
        "protos CreateTrialResponse")

    class Request:
        trial_id = trial.trial_id

    assert servicer.GetTrial(Request(), None).trial.trial_id == trial.trial_id
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    ktcompat.add_servicer(servicer, server)  # registers without starting


def test_synchronized_module_functions_lock_on_the_oracle(tmp_path):
    oracle = oracle_of(kt.oracles.RandomSearchOracle, tmp_path)
    inside, overlaps = [], []

    @ktcompat.synchronized
    def slow(oracle, tuner_id):
        inside.append(tuner_id)
        if len(inside) > 1:
            overlaps.append(tuple(inside))
        time.sleep(0.05)
        oracle.create_trial(tuner_id)  # reentrant: the oracle's own lock, same thread
        inside.remove(tuner_id)

    threads = [threading.Thread(target=slow, args=(oracle, f"w{i}")) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads), _broken("kt.synchronized (deadlock)")
    assert overlaps == [], _broken("kt.synchronized (no longer locks on the first argument)")
    assert len(oracle.ongoing_trials) == 3


def test_trial_statuses_we_use_exist():
    for status in ("RUNNING", "IDLE", "STOPPED", "INVALID", "COMPLETED"):
        assert hasattr(ktcompat.TrialStatus, status), _broken(f"TrialStatus.{status}")
    assert ktcompat.Trial(space(), status=ktcompat.TrialStatus.IDLE).status == "IDLE"
