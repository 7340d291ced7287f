"""Distributed search on keras-tuner's own chief/worker engine.

keras-tuner runs one *chief* process that holds the oracle behind a gRPC
server, and any number of *workers* that ask it for trials, train them and
report back; all of them share one run directory. The processes find each
other through three environment variables, `KERASTUNER_TUNER_ID` ("chief" or
a worker's name), `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`.
`configure` sets them from the CLI's `--chief HOST:PORT` / `--worker HOST:PORT
--worker-id ID`; variables set by hand keep working.

On top of keras-tuner's engine this module adds what a long search on shared
machines needs:

* a worker that cannot reach the chief fails after `connect_timeout` seconds
  with a message (keras-tuner's client waits up to an hour);
* a worker sends a heartbeat while it trains; when the chief has not heard
  from a worker for `worker_timeout` seconds, that worker's trial goes back in
  the queue, so a killed worker loses only its running trial;
* the chief keeps idle workers waiting while other trials are still running
  (one of them may come back), and exits once every trial has ended;
* a chief killed and restarted with the same command resumes the run: finished
  trials are kept, running ones stay with their workers (`resume_running`),
  and a worker's calls wait up to `RPC_TIMEOUT_S` for the chief to come back
  (`outlast_chief_restarts`), so workers carry on by themselves; a worker that
  gave up (or died) is restarted with its same command and `--worker-id`;
* with `auth.Credentials` (`--token-file`, `--tls-*`), only workers holding
  the chief's token are served, over TLS if the chief has a certificate; a
  chief listening beyond this machine without a token warns once.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable

from resnet_tuner.run import auth, ktcompat

#: Seconds between a worker's heartbeats while it trains.
HEARTBEAT_S = 2.0
#: Seconds a worker's RPC may take before the worker gives up on the chief.
RPC_TIMEOUT_S = 120.0
#: Seconds the chief makes an idle worker wait before it asks again.
IDLE_WAIT_S = 1.0

ENV_ID, ENV_IP, ENV_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"


class ChiefUnreachableError(ConnectionError):
    """A worker could not reach the chief, or lost it."""


class ChiefRefusedError(ChiefUnreachableError):
    """The chief refused this worker's token."""


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> `(host, port)`; a clear `ValueError` otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8000. Received: {text!r}")
    return host.strip("[]"), int(port)


def configure(chief: str | None = None, worker: str | None = None,
              worker_id: str | None = None) -> None:
    """Sets keras-tuner's distribution variables for this process.

    Args:
        chief: `HOST:PORT` the chief listens on (this process is the chief).
        worker: `HOST:PORT` of the chief this worker joins.
        worker_id: the worker's name, unique in the search (default: host-pid).
    """
    if chief and worker:
        raise ValueError("A process is either the chief (--chief) or a worker (--worker), "
                         "not both.")
    if worker_id is not None and not worker:
        raise ValueError("--worker-id needs --worker HOST:PORT.")
    if chief:
        host, port = parse_address(chief)
        os.environ.update({ENV_ID: "chief", ENV_IP: host, ENV_PORT: str(port)})
    elif worker:
        host, port = parse_address(worker)
        if worker_id is None:
            import socket

            worker_id = f"{socket.gethostname()}-{os.getpid()}"
        if not worker_id or "chief" in worker_id:
            raise ValueError(f"A worker id must be non-empty and not contain 'chief' "
                             f"(keras-tuner reads that as the chief). Received: {worker_id!r}")
        os.environ.update({ENV_ID: worker_id, ENV_IP: host, ENV_PORT: str(port)})


def role() -> str | None:
    """`"chief"`, `"worker"` or None (not distributed), from the environment."""
    if ENV_IP not in os.environ:
        return None
    missing = [name for name in (ENV_PORT, ENV_ID) if not os.environ.get(name)]
    if missing:
        raise ValueError(f"{ENV_IP} is set but {' and '.join(missing)} not: set all three of "
                         f"{ENV_ID}, {ENV_IP}, {ENV_PORT}, or use --chief / --worker.")
    return "chief" if "chief" in os.environ[ENV_ID] else "worker"


def address() -> str:
    return f"{os.environ[ENV_IP]}:{os.environ[ENV_PORT]}"


def wait_for_chief(timeout: float, credentials: auth.Credentials | None = None) -> None:
    """Returns once the chief answers a call made with `credentials` (TLS, token).

    Raises:
        ChiefRefusedError: at once, when the chief refuses this worker's token.
        ChiefUnreachableError: no answer within `timeout` s (the message says
            when the last error points at a TLS mismatch).
    """
    import grpc

    credentials = credentials or auth.Credentials()
    channel = credentials.channel(address(), os.environ.get(ENV_ID))
    deadline, detail = time.monotonic() + timeout, ""
    try:
        while True:
            try:
                ktcompat.ask_for_space(channel, timeout=max(deadline - time.monotonic(), 0.1))
                break
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise ChiefRefusedError(refused_message(err.details())) from None
                detail = err.details() or str(err.code())
            if time.monotonic() >= deadline:
                raise ChiefUnreachableError(
                    f"Could not reach the chief at {address()} within {timeout:g} s. Start the "
                    f"chief first (resnet-tuner search ... --chief {address()}), check the "
                    "address and that the port is open between the machines, or wait longer "
                    f"with --connect-timeout.{credentials.unreachable_hint(detail)}"
                ) from None
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
    finally:
        channel.close()
    # keras-tuner's client waits up to an hour on every call; a worker whose chief
    # died should fail within minutes instead.
    ktcompat.set_rpc_timeout(RPC_TIMEOUT_S)


def refused_message(detail: str) -> str:
    """A worker's one line when the chief refuses its token (`detail`: the chief's reason)."""
    return (f"the chief at {address()} refused this worker's token: {detail}. Check "
            "--token-file: it must hold the same secret as the chief's.")


def use_credentials(client, credentials: auth.Credentials | None = None) -> None:
    """Sends a worker's `OracleClient` calls through `credentials` (TLS, the token).

    Call it before the client's first call (right after the tuner is built).
    """
    channel = (credentials or auth.Credentials()).channel(address(), os.environ.get(ENV_ID))
    ktcompat.use_channel(client, channel)


def outlast_chief_restarts(client) -> None:
    """A worker's calls to the chief retry while it restarts, each up to its RPC timeout.

    Without this, a call in flight when the chief dies fails at once and the
    worker exits (an idle worker is nearly always in a call). Call it once the
    client's channel is final (after `use_credentials`).
    """
    ktcompat.retry_unavailable(client)


class Heartbeat:
    """Context manager: a worker thread telling the chief every `HEARTBEAT_S` s it is alive."""

    def __init__(self, oracle_client, trial_id: str):
        self._client, self._trial_id = oracle_client, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                ktcompat.send_heartbeat(self._client, self._trial_id, timeout=HEARTBEAT_S * 5)
            except Exception:  # the chief is busy or gone; the trial's own calls will tell
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_S * 6)


def _servicer(oracle):
    """keras-tuner's `OracleServicer`, noting when each trial's worker was last heard from."""
    class Servicer(ktcompat.servicer_base()):
        def __init__(self, oracle):
            super().__init__(oracle)
            self.seen: dict[str, float] = {}

        def CreateTrial(self, request, context):  # noqa: N802 (gRPC method names)
            trial = _create_trial(self.oracle, request.tuner_id)
            if trial.status == ktcompat.TrialStatus.STOPPED:
                self.stop_triggered = True
            elif trial.status == ktcompat.TrialStatus.RUNNING:
                self.seen[trial.trial_id] = time.monotonic()
            else:  # IDLE: let the worker wait here instead of asking again at once
                time.sleep(IDLE_WAIT_S)
            return ktcompat.create_trial_response(trial)

        def UpdateTrial(self, request, context):  # noqa: N802
            self.seen[request.trial_id] = time.monotonic()
            return super().UpdateTrial(request, context)

        def GetTrial(self, request, context):  # noqa: N802
            self.seen[request.trial_id] = time.monotonic()
            return super().GetTrial(request, context)

        def EndTrial(self, request, context):  # noqa: N802
            # Once per trial: a worker repeats an EndTrial its restarted chief never
            # answered, and a worker counted as lost may end a trial rerun meanwhile.
            _end_once(self.oracle, ktcompat.Trial.from_proto(request.trial))
            return ktcompat.end_trial_response()

    return Servicer(oracle)


@ktcompat.synchronized
def _create_trial(oracle, tuner_id):
    """The oracle's next trial; IDLE instead of STOPPED while other trials still run."""
    trial = oracle.create_trial(tuner_id)
    others = [t for t in oracle.ongoing_trials if t != tuner_id]
    if trial.status == ktcompat.TrialStatus.STOPPED and others:
        oracle.tuner_ids.add(tuner_id)  # still a client: it will ask again
        return ktcompat.Trial(oracle.get_space(), status=ktcompat.TrialStatus.IDLE)
    return trial


@ktcompat.synchronized
def _end_once(oracle, trial):
    return ktcompat.end_once(oracle, trial)


def resume_running(oracle, log: Callable[[str], None] = print) -> dict[str, str]:
    """A restarted chief gives the trials that were running back to their workers.

    keras-tuner's reload queues them for a rerun, while their workers (which
    wait up to `RPC_TIMEOUT_S` for the chief in every call) may still be
    training them. Kept as theirs, a trial ends once when its worker reports;
    a worker that does not come back within the chief's `worker_timeout` loses
    it to the queue as a killed worker does; a worker restarted with the same
    `--worker-id` gets it back at once. Call it before the oracle saves.

    Returns:
        worker id -> trial id of the trials given back.
    """
    restored = ktcompat.restore_running(oracle)
    for tuner_id, trial_id in sorted(restored.items()):
        log(f"chief: resuming; trial {trial_id} stays with worker {tuner_id} (back in the queue "
            "if it does not report within --worker-timeout)")
    return restored


@ktcompat.synchronized
def _requeue(oracle, tuner_id, trial, reason):
    """Puts a lost worker's trial back in the queue for the next worker that asks."""
    return ktcompat.requeue(oracle, tuner_id, trial, reason)


@ktcompat.synchronized
def _finished(oracle):
    return ktcompat.nothing_left(oracle)


def requeue_silent_workers(oracle, seen: dict[str, float], now: float, worker_timeout: float,
                           log: Callable[[str], None] = print) -> list[str]:
    """Gives the trials of workers not heard from for `worker_timeout` s back to the queue.

    Args:
        oracle: the chief's oracle.
        seen: trial id -> when its worker was last heard from (`now`'s clock);
            a running trial not in it counts as heard from `now`.
        now: the current time on the clock of `seen`.
        worker_timeout: seconds of silence after which a worker counts as lost.
        log: where the chief says which trial it requeues.

    Returns:
        The ids of the requeued trials.
    """
    requeued = []
    for tuner_id, trial in list(oracle.ongoing_trials.items()):
        last = seen.setdefault(trial.trial_id, now)
        if now - last > worker_timeout:
            log(f"chief: no word from worker {tuner_id} for {now - last:.0f} s; "
                f"trial {trial.trial_id} goes back in the queue")
            if _requeue(oracle, tuner_id, trial,
                        f"worker {tuner_id} stopped answering; trial rerun"):
                requeued.append(trial.trial_id)
    return requeued


def open_server(oracle, credentials: auth.Credentials | None = None,
                log: Callable[[str], None] = print):
    """Starts the chief's gRPC server for `oracle` on `address()`.

    With a certificate in `credentials` it listens with TLS; with a token, every
    call must carry it (refused workers are logged to `log`, once each). Without
    a token on a non-loopback address it warns (`auth.OpenChiefWarning`).

    Returns:
        `(server, servicer)`; stop the server with `server.stop(grace)`.
    """
    from concurrent import futures

    import grpc

    credentials = credentials or auth.Credentials()
    if credentials.token() is None and not auth.is_loopback(os.environ[ENV_IP].strip("[]")):
        warnings.warn(auth.open_chief_warning(address()), auth.OpenChiefWarning, stacklevel=2)
    servicer = _servicer(oracle)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         interceptors=credentials.server_interceptors(log))
    ktcompat.add_servicer(servicer, server)
    if credentials.add_port(server, address()) == 0:
        raise OSError(f"The chief cannot listen on {address()}: the port is taken or the "
                      "address is not this machine's.")
    server.start()
    return server, servicer


def serve(oracle, worker_timeout: float = 60.0, on_trial_end: Callable | None = None,
          log: Callable[[str], None] = print, poll: float = 0.5,
          credentials: auth.Credentials | None = None) -> None:
    """Runs the chief: serves `oracle` until the search is over and every worker has left.

    Args:
        oracle: the chief tuner's oracle.
        worker_timeout: seconds of silence after which a worker counts as lost.
        on_trial_end: called with each trial that ends (for progress lines).
        log: where the chief's messages go.
        poll: seconds between the chief's checks.
        credentials: the chief's token and TLS files (`open_server`).
    """
    credentials = credentials or auth.Credentials()
    server, servicer = open_server(oracle, credentials, log)
    worker_flags = "".join(flag for flag, needed in ((" --token-file PATH", credentials.token_file),
                                                      (" --tls-ca CA.pem", credentials.tls_cert))
                           if needed)
    log(f"chief: serving the search at {address()}; start workers with "
        f"--worker {address()} --worker-id NAME{worker_flags}")
    reported = len(oracle.end_order)
    try:
        while True:
            time.sleep(poll)
            requeue_silent_workers(oracle, servicer.seen, time.monotonic(), worker_timeout, log)
            while on_trial_end is not None and reported < len(oracle.end_order):
                on_trial_end(oracle.trials[oracle.end_order[reported]])
                reported += 1
            if servicer.stop_triggered and _finished(oracle):
                break
    finally:
        server.stop(grace=2)
    log("chief: every trial has ended; the search is over")
