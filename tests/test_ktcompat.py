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


def test_a_reloaded_oracle_queues_running_trials_and_restore_running_gives_them_back(tmp_path):
    oracle = oracle_of(kt.oracles.RandomSearchOracle, tmp_path)
    first, second = oracle.create_trial("w1"), oracle.create_trial("w2")  # each saves the oracle
    restarted = oracle_of(kt.oracles.RandomSearchOracle, tmp_path)
    restarted.reload()  # what a restarted chief's tuner does
    assert sorted(restarted._retry_queue) == [first.trial_id, second.trial_id], _broken(
        "Oracle.reload() (no longer queues the trials that were running)")
    assert restarted.ongoing_trials == {}, _broken("Oracle.reload() ongoing_trials")
    assert ktcompat.restore_running(restarted) == {"w1": first.trial_id, "w2": second.trial_id}
    assert restarted._retry_queue == [] and restarted.tuner_ids == {"w1", "w2"}
    assert {k: t.trial_id for k, t in restarted.ongoing_trials.items()} == {
        "w1": first.trial_id, "w2": second.trial_id}
    assert restarted.create_trial("w1").trial_id == first.trial_id, _broken(
        "Oracle.create_trial (no longer gives a tuner its ongoing trial)")
    restarted.update_trial(first.trial_id, {"val_loss": 1.0})
    first.status = ktcompat.TrialStatus.COMPLETED
    restarted.end_trial(first)  # its display line needs the start noted by restore_running
    assert restarted.end_order == [first.trial_id]


def test_end_once_counts_a_trial_once(tmp_path):
    oracle = oracle_of(kt.oracles.RandomSearchOracle, tmp_path)
    trial = oracle.create_trial("w1")
    oracle.update_trial(trial.trial_id, {"val_loss": 1.0})
    trial.status = ktcompat.TrialStatus.COMPLETED
    assert ktcompat.end_once(oracle, trial) is True
    assert ktcompat.end_once(oracle, trial) is False  # the same EndTrial again
    assert oracle.end_order == [trial.trial_id], _broken("Oracle.end_order")
    # A trial requeued (its worker thought lost) that its worker completes after all.
    late = oracle.create_trial("w2")
    assert ktcompat.requeue(oracle, "w2", late, "lost")
    oracle.update_trial(late.trial_id, {"val_loss": 2.0})
    late.status = ktcompat.TrialStatus.COMPLETED
    assert ktcompat.end_once(oracle, late) is True
    assert oracle._retry_queue == [] and oracle.end_order == [trial.trial_id, late.trial_id]
    assert oracle.trials[late.trial_id].status == "COMPLETED"
    assert ktcompat.end_trial_response().__class__.__name__ == "EndTrialResponse"


def test_every_client_call_goes_through_the_stub_with_a_timeout():
    from keras_tuner.src.distribute import oracle_client

    for name in ("create_trial", "update_trial", "end_trial", "get_trial", "get_space"):
        source = inspect.getsource(getattr(oracle_client.OracleClient, name))
        assert "self.stub." in source and "timeout=TIMEOUT" in source, _broken(
            f"OracleClient.{name} (retry_unavailable wraps self.stub and reads timeout=)")


def test_retry_unavailable_retries_within_the_calls_timeout(monkeypatch, tmp_path):
    import grpc
    from keras_tuner.src.distribute import oracle_client

    class Unavailable(grpc.RpcError):
        def __init__(self, code=grpc.StatusCode.UNAVAILABLE):
            self._code = code

        def code(self):
            return self._code

    calls = []

    class Stub:
        def GetTrial(self, request, timeout, wait_for_ready=False):  # noqa: N802
            calls.append(timeout)
            if len(calls) < 3:
                raise Unavailable()
            return "answer"

        def EndTrial(self, request, timeout, wait_for_ready=False):  # noqa: N802
            raise Unavailable(grpc.StatusCode.UNAUTHENTICATED)

    monkeypatch.setenv("KERASTUNER_TUNER_ID", "w1")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    client = oracle_client.OracleClient(oracle_of(kt.oracles.RandomSearchOracle, tmp_path))
    client.stub = Stub()
    ktcompat.retry_unavailable(client, pause=0.01)
    ktcompat.retry_unavailable(client, pause=0.01)  # once is enough
    assert client.stub.GetTrial("req", timeout=5.0, wait_for_ready=True) == "answer"
    assert len(calls) == 3 and 4.9 < calls[0] <= 5.0 and calls[0] > calls[1] > calls[2] > 4
    with pytest.raises(grpc.RpcError):  # other errors at once
        client.stub.EndTrial("req", timeout=5.0)
    calls.clear()
    with pytest.raises(grpc.RpcError):  # UNAVAILABLE past the call's timeout
        client.stub.GetTrial("req", timeout=0.015)


def test_a_workers_client_makes_no_call_until_its_stub_is_swapped(monkeypatch, tmp_path):
    from concurrent import futures

    import grpc
    from keras_tuner.src.distribute import oracle_client

    served = []

    class Seen(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            served.append(details.method)
            return continuation(details)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[Seen()])
    ktcompat.add_servicer(ktcompat.servicer_base()(oracle_of(kt.oracles.RandomSearchOracle,
                                                             tmp_path)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "w1")
        monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(port))
        tuner = kt.RandomSearch(build, objective="val_loss", max_trials=1,
                                directory=str(tmp_path / "worker"))
        assert isinstance(tuner.oracle, oracle_client.OracleClient), _broken(
            "BaseTuner.__init__ (a worker's oracle is no longer an OracleClient)")
        assert served == [], _broken("BaseTuner.__init__ (it calls the chief before "
                                     "use_channel can swap the client's stub)")
        sent = []

        class Sent(grpc.UnaryUnaryClientInterceptor):
            def intercept_unary_unary(self, continuation, details, request):
                sent.append(details.method)
                return continuation(details, request)

        channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), Sent())
        ktcompat.use_channel(tuner.oracle, channel)
        assert "units" in tuner.oracle.get_space(), _broken("OracleClient.get_space")
        assert sent == served and len(sent) == 1, _broken(
            "OracleClient.stub (the client no longer calls through its stub)")
        ktcompat.ask_for_space(channel, timeout=5)
        assert served[-1].endswith("/GetSpace"), _broken("protos OracleStub.GetSpace")
        channel.close()
    finally:
        server.stop(grace=0)


def test_the_checkpoint_path_is_the_file_a_trial_saves_and_loads(tmp_path):
    from pathlib import Path

    import numpy as np

    from resnet_tuner.run.trials import CHECKPOINT_PREFIX, checkpoint_files

    def one_output(hp):
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(loss="mse")
        return model

    tuner = kt.RandomSearch(one_output, objective="val_loss", max_trials=1, seed=1,
                            directory=str(tmp_path))
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    tuner.search(x, y, validation_data=(x, y), epochs=1, verbose=0)
    trial = tuner.oracle.get_best_trials(1)[0]
    path = Path(ktcompat.checkpoint_path(tuner, trial.trial_id))
    assert path.is_file() and path.parent == Path(tuner.get_trial_dir(trial.trial_id)), _broken(
        "Tuner._get_checkpoint_fname(trial_id)")
    assert path.name.startswith(CHECKPOINT_PREFIX) and checkpoint_files(path.parent) == [path], (
        _broken("the checkpoint's file name (run.trials.CHECKPOINT_PREFIX)"))
    path.unlink()
    with pytest.raises((OSError, ValueError)):  # the file load_model reads, and nothing else
        tuner.load_model(trial)


def test_hyperband_brackets_and_sizes_as_promotable_reads_them(tmp_path):
    # max_epochs 3, factor 3: bracket 1 runs 3 trials of 1 epoch, then the best for 3.
    oracle = oracle_of(kt.oracles.HyperbandOracle, tmp_path, max_epochs=3, factor=3)
    first = [oracle.create_trial(f"w{i}") for i in range(3)]
    assert [t.hyperparameters.values["tuner/round"] for t in first] == [0, 0, 0], _broken(
        "HyperbandOracle bracket sizes (_get_size)")
    assert ktcompat.promotable(oracle) == set()
    for trial, loss in zip(first[:2], (0.3, 0.1), strict=True):
        oracle.update_trial(trial.trial_id, {"val_loss": loss})
        trial.status = ktcompat.TrialStatus.COMPLETED
        oracle.end_trial(trial)
    # One place in round 1: the 0.1 trial may take it, the 0.3 one (one better rival) not.
    assert ktcompat.promotable(oracle) == {first[1].trial_id}, _broken(
        "HyperbandOracle._brackets rounds of {'id', 'past_id'} / _get_size")
    oracle.update_trial(first[2].trial_id, {"val_loss": 0.2})
    first[2].status = ktcompat.TrialStatus.COMPLETED
    oracle.end_trial(first[2])
    child = oracle.create_trial("w0")
    assert child.hyperparameters.values.get("tuner/trial_id") == first[1].trial_id, _broken(
        "HyperbandOracle.populate_space (promotes the best of a round)")
    assert ktcompat.promotable(oracle) == set()  # its place is taken
    assert ktcompat.promotable(oracle_of(kt.oracles.RandomSearchOracle, tmp_path / "r")) == set()


@pytest.mark.parametrize("kind", sorted(ORACLES))
def test_start_trial_registers_a_trial_as_create_trial_does_past_max_trials(kind, tmp_path):
    kwargs = {"max_epochs": 2} if kind == "hyperband" else {"max_trials": 1}
    oracle = oracle_of(ORACLES[kind], tmp_path, **kwargs)
    first = oracle.create_trial("tuner0")
    oracle.update_trial(first.trial_id, {"val_loss": 1.0})
    first.status = "COMPLETED"
    oracle.end_trial(first)
    values = {**tuned(first.hyperparameters.values), "final/epochs": 3}
    trial = ktcompat.start_trial(oracle, "tuner0", values)
    assert trial.status == ktcompat.TrialStatus.RUNNING, _broken("Trial statuses")
    assert oracle.trials[trial.trial_id] is trial, _broken("Oracle.trials")
    assert oracle.ongoing_trials["tuner0"] is trial, _broken("Oracle.ongoing_trials")
    assert oracle.start_order[-1] == trial.trial_id, _broken("Oracle.start_order")
    assert len(trial.trial_id) == len(first.trial_id), _broken("create_trial's trial ids")
    assert trial.hyperparameters.values["final/epochs"] == 3
    saved = tmp_path / "project" / f"trial_{trial.trial_id}" / "trial.json"
    assert saved.is_file(), _broken("Oracle._save_trial")
    oracle.update_trial(trial.trial_id, {"val_loss": 0.5})
    trial.status = "COMPLETED"
    oracle.end_trial(trial)  # ends like any trial
    assert trial.trial_id in oracle.end_order, _broken("Oracle.end_trial of a started trial")


def test_stopped_trial_ends_the_tuners_loop_and_lets_go_of_its_id(tmp_path):
    oracle = oracle_of(kt.oracles.RandomSearchOracle, tmp_path, max_trials=5)
    oracle.tuner_ids.add("tuner0")
    trial = ktcompat.stopped_trial(oracle, "tuner0")
    assert trial.status == ktcompat.TrialStatus.STOPPED, _broken("TrialStatus.STOPPED")
    assert "tuner0" not in oracle.tuner_ids, _broken("Oracle.tuner_ids")
    assert not oracle.trials, _broken("Oracle.trials (a stopped trial is not recorded)")
