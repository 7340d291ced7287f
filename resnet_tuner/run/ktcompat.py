"""Every use of keras-tuner's private API, in one place.

keras-tuner (1.4.x) gives no public hook for what this package needs: choosing
the first hyperparameter values an oracle draws, giving a trial back to the
queue, lengthening a worker's RPC timeout, and serving the oracle with a
servicer that hears heartbeats. Each use below names what it relies on, and
`tests/test_ktcompat.py` has one contract test per use, so a keras-tuner
release that changes one fails there with a message, not deep in a search.
`pyproject.toml` bounds keras-tuner below the next minor release for the same
reason.

Uses (keras-tuner name -> helper here):

* `Oracle._random_values()` (the one method every random draw goes through) and
  `Oracle._duplicate(values)` -> `InitialFirst`;
* `Tuner.__init__(oracle, hypermodel, ...)` called past a built-in tuner's own
  `__init__` (which only builds its oracle) -> `init_tuner_with_oracle`;
* `BaseTuner._is_worker()` -> `is_worker`;
* `Oracle._retry_queue` and `Oracle._save_trial(trial)` -> `requeue`,
  `nothing_left`;
* `keras_tuner.src.distribute.oracle_client.TIMEOUT` -> `set_rpc_timeout`;
* `OracleClient.stub` and `keras_tuner.src.protos` -> `send_heartbeat`,
  `create_trial_response`, `add_servicer`;
* `OracleClient.stub` built on a channel of ours (keras-tuner's client opens
  its own plaintext channel, without metadata) and `protos` `OracleStub` /
  `GetSpaceRequest` -> `use_channel`, `ask_for_space`;
* `keras_tuner.src.distribute.oracle_chief.OracleServicer` -> `servicer_base`;
* `Oracle._get_oracle_fname()` and its saved `ongoing_trials`, undoing
  `Oracle.reload()`'s requeue of running trials (a restarted chief), and
  `Oracle._display.on_trial_begin` -> `restore_running`; `Oracle.end_order` / `_retry_queue` before
  `Oracle.end_trial` -> `end_once`; `OracleClient.stub` wrapped, its calls
  passing `timeout=` -> `retry_unavailable`;
* `Oracle.ongoing_trials`, `tuner_ids`, `end_order` (undocumented attributes
  without an underscore; the chief in `distribute` reads them) -> checked in
  the same contract tests;
* `kt.synchronized` on module functions whose first argument is the oracle
  (documented for methods only) -> `synchronized`;
* `Tuner._get_checkpoint_fname(trial_id)` -> `checkpoint_path`;
  `HyperbandOracle._brackets` (rounds of `{"id", "past_id"}`) and
  `_get_size(bracket, round)` -> `promotable` (`run.checkpoints` prunes);
* `Oracle.create_trial`'s bookkeeping of a trial it starts or refuses
  (`_record_values`, `ongoing_trials`, `trials`, `start_order`, `_save_trial`,
  `_display`, `tuner_ids`, the zero-padded trial id) -> `start_trial`,
  `stopped_trial` (`run.budget`'s final training and its end of a search).
"""

from __future__ import annotations

import time

import keras_tuner as kt
from keras_tuner.engine.trial import Trial, TrialStatus

__all__ = [
    "InitialFirst", "Trial", "TrialStatus", "add_servicer", "create_trial_response",
    "init_tuner_with_oracle", "is_worker", "nothing_left", "requeue", "send_heartbeat",
    "servicer_base", "set_rpc_timeout", "synchronized", "use_channel", "ask_for_space",
    "end_once", "end_trial_response", "restore_running", "retry_unavailable",
    "checkpoint_path", "promotable", "start_trial", "stopped_trial",
]


def synchronized(func):
    """`kt.synchronized` for a function whose first argument is an oracle.

    keras-tuner documents it for oracle methods; it locks on the first
    argument, so `f(oracle, ...)` holds the same lock as the oracle's own
    `create_trial` / `update_trial` / `end_trial` calls from gRPC threads.
    """
    return kt.synchronized(func)


class InitialFirst:
    """Oracle mixin: the given configurations come before random ones.

    keras-tuner's random, Hyperband and Bayesian oracles draw every fresh
    random candidate through `Oracle._random_values()`; this override returns
    the first `initial` configuration not tried yet (`Oracle._duplicate`)
    before it lets the oracle draw. Hyperparameters a configuration does not
    name take their defaults; inactive conditional ones are left out.

    Args:
        initial: hyperparameter values by name, tried in this order.
    """

    def __init__(self, *args, initial=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.initial_values = [dict(values) for values in initial]

    def _random_values(self):
        for wanted in self.initial_values:
            hps = kt.HyperParameters()
            for hp in self.hyperparameters.space:
                hps.merge([hp])
                if hps.is_active(hp):
                    hps.values[hp.name] = wanted.get(hp.name, hp.default)
            if not self._duplicate(hps.values):
                return hps.values
        return super()._random_values()


def init_tuner_with_oracle(tuner, builtin: type, oracle, hypermodel, **kwargs) -> None:
    """Runs `kt.Tuner.__init__` for `tuner` with our `oracle`, skipping `builtin.__init__`.

    keras-tuner's `RandomSearch`, `Hyperband` and `BayesianOptimization`
    constructors only build their own oracle (no `oracle=` argument) and pass it
    on; ours build a declared subclass of that oracle instead.
    """
    super(builtin, tuner).__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)


def is_worker(tuner) -> bool:
    """True in a distributed search's worker process (keras-tuner's own test)."""
    return tuner._is_worker()


def requeue(oracle, tuner_id: str, trial, reason: str) -> bool:
    """Gives `tuner_id`'s running `trial` back to the queue; False if it is no longer theirs.

    Not synchronized: call it under `kt.synchronized` (the chief does).
    """
    if oracle.ongoing_trials.get(tuner_id) is not trial:
        return False
    oracle.ongoing_trials.pop(tuner_id)
    oracle.tuner_ids.discard(tuner_id)
    trial.status = TrialStatus.INVALID
    trial.message = reason
    if trial.trial_id not in oracle._retry_queue:
        oracle._retry_queue.append(trial.trial_id)
    oracle._save_trial(trial)
    oracle.save()
    return True


def nothing_left(oracle) -> bool:
    """No trial running, no worker registered, no trial waiting to be rerun."""
    return not oracle.ongoing_trials and not oracle.tuner_ids and not oracle._retry_queue


def restore_running(oracle) -> dict[str, str]:
    """Gives the trials that were running when the chief stopped back to their workers.

    `Oracle.reload()` (a restarted chief) puts every trial its saved state lists
    as running into `Oracle._retry_queue`, so the next worker that asks runs it
    again while the worker that had it may still be training it: the trial
    would run twice. This reads the saved state's `ongoing_trials` (tuner id ->
    trial id) from `Oracle._get_oracle_fname()` (written before the reload; call
    this before the oracle saves again) and makes those trials running under
    their workers again, as before the stop. Not synchronized: the chief calls
    it before it serves.

    Returns:
        tuner id -> trial id of the trials given back.
    """
    import json

    try:
        with open(oracle._get_oracle_fname(), encoding="utf-8") as file:
            saved = json.load(file).get("ongoing_trials", {})
    except (OSError, ValueError):
        return {}
    restored = {}
    for tuner_id, trial_id in saved.items():
        trial = oracle.trials.get(trial_id)
        if (trial is None or trial_id not in oracle._retry_queue
                or tuner_id in oracle.ongoing_trials):
            continue
        oracle._retry_queue.remove(trial_id)
        trial.status = TrialStatus.RUNNING
        oracle.ongoing_trials[tuner_id] = trial
        oracle.tuner_ids.add(tuner_id)
        # What create_trial does for a trial it hands out: the display's end line
        # (run by end_trial) reads the trial's start and number noted here.
        oracle._display.on_trial_begin(trial)
        restored[tuner_id] = trial_id
    return restored


def end_once(oracle, trial) -> bool:
    """`Oracle.end_trial(trial)` unless the trial has ended already; False then.

    A worker sends EndTrial again when the chief died before answering it, and
    a worker counted as lost may end a trial that was rerun meanwhile:
    keras-tuner would append it to `Oracle.end_order` twice (counted twice).
    A trial that completes while queued for a rerun (`Oracle._retry_queue`)
    leaves the queue. Not synchronized: call it under `kt.synchronized`.
    """
    if trial.trial_id in oracle.end_order:
        return False
    if trial.status == TrialStatus.COMPLETED and trial.trial_id in oracle._retry_queue:
        oracle._retry_queue.remove(trial.trial_id)
    oracle.end_trial(trial)
    return True


def end_trial_response():
    """The gRPC answer to a worker's EndTrial."""
    from keras_tuner.src import protos

    return protos.get_service().EndTrialResponse()


class _RetryingStub:
    """A worker's `OracleClient.stub` whose calls outlast a chief restart (`retry_unavailable`)."""

    def __init__(self, stub, pause: float):
        self.stub, self.pause = stub, pause

    def __getattr__(self, name):
        import grpc

        method = getattr(self.stub, name)

        def call(request, timeout=None, **kwargs):
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.01)
                try:
                    return method(request, timeout=left, **kwargs)
                except grpc.RpcError as err:
                    code = err.code() if callable(getattr(err, "code", None)) else None
                    if code != grpc.StatusCode.UNAVAILABLE or (
                            deadline is not None and deadline - time.monotonic() < self.pause):
                        raise
                time.sleep(self.pause)

        return call


def retry_unavailable(client, pause: float = 1.0) -> None:
    """Retries a worker's calls to the chief that fail as UNAVAILABLE, within each call's timeout.

    keras-tuner's `OracleClient` calls with `wait_for_ready=True`, which waits
    for a chief that is down when the call starts, but a call in flight when
    the chief dies fails at once (UNAVAILABLE): an idle worker is nearly always
    in one. Retried until the call's own `timeout` (`set_rpc_timeout`), a
    worker outlasts a chief restart. Wraps `OracleClient.stub`: call it after
    the stub is final (`use_channel`).
    """
    if not isinstance(client.stub, _RetryingStub):
        client.stub = _RetryingStub(client.stub, pause)


def set_rpc_timeout(seconds: float) -> None:
    """Seconds a worker's call to the chief may take (keras-tuner's default is an hour)."""
    from keras_tuner.src.distribute import oracle_client

    oracle_client.TIMEOUT = seconds


def send_heartbeat(client, trial_id: str, timeout: float) -> None:
    """Asks the chief for `trial_id` through a worker's `OracleClient` (the chief notes it)."""
    from keras_tuner.src import protos

    client.stub.GetTrial(protos.get_service().GetTrialRequest(trial_id=trial_id),
                         timeout=timeout)


def create_trial_response(trial):
    """The gRPC answer to a worker's CreateTrial."""
    from keras_tuner.src import protos

    return protos.get_service().CreateTrialResponse(trial=trial.to_proto())


def servicer_base() -> type:
    """keras-tuner's gRPC `OracleServicer` (attributes `oracle`, `stop_triggered`)."""
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    return OracleServicer


def add_servicer(servicer, server) -> None:
    from keras_tuner.src import protos

    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)


def use_channel(client, channel) -> None:
    """Sends every call of a worker's `OracleClient` through `channel` (TLS, a token).

    keras-tuner's client builds its stub on a plaintext channel of its own in
    `__init__`, before any call; swapping the stub before the first call leaves
    that channel unused.
    """
    from keras_tuner.src import protos

    client.stub = protos.get_service_grpc().OracleStub(channel)


def ask_for_space(channel, timeout: float) -> None:
    """One `GetSpace` call to the chief on `channel`, failing fast (no wait for ready).

    Raises:
        grpc.RpcError: the chief refused the call or could not be reached.
    """
    from keras_tuner.src import protos

    stub = protos.get_service_grpc().OracleStub(channel)
    stub.GetSpace(protos.get_service().GetSpaceRequest(), timeout=timeout, wait_for_ready=False)


def checkpoint_path(tuner, trial_id: str) -> str:
    """The file keras-tuner saves a trial's best epoch's weights to (and loads them from)."""
    return tuner._get_checkpoint_fname(trial_id)


def promotable(oracle) -> set[str]:
    """Hyperband: completed trials a later round of an unfinished bracket may still promote.

    keras-tuner's `HyperbandOracle.populate_space` fills round r + 1 of a
    bracket with the best completed, not yet promoted trials of round r, one
    at a time, until the round has `_get_size(bracket, r + 1)` trials; a
    promoted trial starts from its parent's checkpoint. A trial with at least
    as many strictly better such rivals as places are left can never be
    picked. Finished brackets are dropped from `_brackets`. Other oracles:
    an empty set.
    """
    brackets = getattr(oracle, "_brackets", None)
    if not brackets:
        return set()
    maximize = oracle.objective.direction == "max"
    kept: set[str] = set()
    for bracket in brackets:
        rounds = bracket["rounds"]
        for round_num in range(len(rounds) - 1):
            places = oracle._get_size(bracket["bracket_num"], round_num + 1) - len(
                rounds[round_num + 1])
            if places <= 0:
                continue
            promoted = {info["past_id"] for info in rounds[round_num + 1]}
            rivals = [oracle.trials[info["id"]] for info in rounds[round_num]
                      if info["id"] not in promoted and info["id"] in oracle.trials]
            scores = [t.score for t in rivals if t.status == "COMPLETED" and t.score is not None]
            for trial in rivals:
                if trial.status != "COMPLETED" or trial.score is None:
                    continue
                better = sum((s > trial.score) if maximize else (s < trial.score) for s in scores)
                if better < places:
                    kept.add(trial.trial_id)
    return kept


def start_trial(oracle, tuner_id: str, values: dict) -> Trial:
    """Starts a trial of the given hyperparameter values for `tuner_id`, as
    `Oracle.create_trial` does for the values `populate_space` returns, but
    past `max_trials` and the oracle's own choice (a budget's final training).
    Call it under the oracle's lock."""
    trial_id = f"{{:0{len(str(oracle.max_trials))}d}}".format(len(oracle.trials))
    hyperparameters = oracle.hyperparameters.copy()
    hyperparameters.values = dict(values)
    trial = Trial(hyperparameters=hyperparameters, trial_id=trial_id,
                  status=TrialStatus.RUNNING)
    oracle.tuner_ids.add(tuner_id)
    oracle._record_values(trial)
    oracle.ongoing_trials[tuner_id] = trial
    oracle.trials[trial_id] = trial
    oracle.start_order.append(trial_id)
    oracle._save_trial(trial)
    oracle.save()
    oracle._display.on_trial_begin(trial)
    return trial


def stopped_trial(oracle, tuner_id: str) -> Trial:
    """The STOPPED trial `Oracle.create_trial` answers when the search is over: the
    tuner leaves its loop. Call it under the oracle's lock."""
    oracle.tuner_ids.discard(tuner_id)
    return Trial(hyperparameters=oracle.hyperparameters.copy(), trial_id=None,
                 status=TrialStatus.STOPPED)
