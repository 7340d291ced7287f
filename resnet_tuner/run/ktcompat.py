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
* `keras_tuner.src.distribute.oracle_chief.OracleServicer` -> `servicer_base`;
* `Oracle.ongoing_trials`, `tuner_ids`, `end_order` (undocumented attributes
  without an underscore; the chief in `distribute` reads them) -> checked in
  the same contract tests;
* `kt.synchronized` on module functions whose first argument is the oracle
  (documented for methods only) -> `synchronized`.
"""

from __future__ import annotations

import keras_tuner as kt
from keras_tuner.engine.trial import Trial, TrialStatus

__all__ = [
    "InitialFirst", "Trial", "TrialStatus", "add_servicer", "create_trial_response",
    "init_tuner_with_oracle", "is_worker", "nothing_left", "requeue", "send_heartbeat",
    "servicer_base", "set_rpc_timeout", "synchronized",
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
