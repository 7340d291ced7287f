"""What a distributed search's chief costs per trial, against baselines run here.

A worker makes four RPCs to the chief per trial (keras-tuner 1.4's worker
loop, `BaseTuner.search` / `_run_and_update_trial` / `on_trial_end`):
CreateTrial, GetTrial (did `run_trial` report?), UpdateTrial (the trial's
metrics) and EndTrial, plus one heartbeat (GetTrial) every
`distribute.HEARTBEAT_S` while it trains. Models and checkpoints go through
the shared run directory, never through the chief.

Measured, each as a median:

* (a) the round trip of each of those calls, made the way a worker makes them
  (a worker tuner's `OracleClient` with our credentials channel and retries)
  to a chief served by `distribute.open_server` around a real oracle (random
  search over the quick space, saving `trial.json` and `oracle.json` as a
  search does), over `--calls` trials; the baseline is a no-op gRPC call
  (empty request, empty answer) to a server in the same process;
* (b) the start-up of a trial process (the CLI runs each trial of a
  non-distributed search in a fresh process, `run/processes.py`): spawn to
  the run reloaded (`load_run`: TensorFlow, the data, the tuner), against
  `python -c pass` and `python -c "import tensorflow"`;
* (c) one training epoch of the quick space's default model on digits (32x32,
  1,437 training images), the unit a trial's length is counted in.

Then the arithmetic: the chief serves trials one call at a time under the
oracle's lock, so it handles at most 1 / (sum of the per-trial calls' service
times) trials a second; N workers with trials of T seconds ask for N / T.

Usage:
    python bench/chief_overhead.py [--calls 200] [--starts 3] [--no-epoch]

Writes bench/results/chief_overhead.json (not committed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noop_round_trip(calls: int) -> list[float]:
    """Round trips of an empty unary gRPC call to a server in this process."""
    from concurrent import futures

    import grpc

    handler = grpc.method_handlers_generic_handler("bench.Noop", {
        "Ping": grpc.unary_unary_rpc_method_handler(lambda request, context: b""),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    ping = channel.unary_unary("/bench.Noop/Ping")
    try:
        for _ in range(20):  # connect and warm up
            ping(b"", timeout=10, wait_for_ready=True)
        times = []
        for _ in range(calls * 4):
            started = time.perf_counter()
            ping(b"", timeout=10, wait_for_ready=True)
            times.append(time.perf_counter() - started)
        return times
    finally:
        channel.close()
        server.stop(0)


def trial_calls(calls: int, workdir: Path) -> dict[str, list[float]]:
    """Round trips of a worker's per-trial calls to a real chief, `calls` trials."""
    from resnet_tuner import ResNetHyperModel
    from resnet_tuner.run import distribute
    from resnet_tuner.run.tuners import make_tuner

    hypermodel = ResNetHyperModel("quick", input_shape=(32, 32, 3), num_classes=10)
    address = f"127.0.0.1:{free_port()}"
    distribute.configure(chief=address)
    chief = make_tuner("random", hypermodel, workdir, max_trials=calls + 10, verbose=0)
    chief.save()
    server, _ = distribute.open_server(chief.oracle, log=lambda line: None)
    distribute.configure(worker=address, worker_id="bench-worker")
    worker = make_tuner("random", hypermodel, workdir, max_trials=calls + 10, verbose=0)
    client = worker.oracle  # keras-tuner's OracleClient, as in a worker
    distribute.use_credentials(client)
    distribute.outlast_chief_restarts(client)
    try:
        # The chief's oracle prints a table per trial, as in a search (the CLI
        # drops those lines): printed to the null device, so their cost counts.
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            return worker_calls(client, calls)
    finally:
        server.stop(0)
        for name in (distribute.ENV_ID, distribute.ENV_IP, distribute.ENV_PORT):
            os.environ.pop(name, None)


def worker_calls(client, calls: int) -> dict[str, list[float]]:
    """Times a worker's calls of `calls` trials, in a worker's order."""
    from resnet_tuner.run import ktcompat

    times: dict[str, list[float]] = {"CreateTrial": [], "heartbeat (GetTrial)": [],
                                     "GetTrial": [], "UpdateTrial": [], "EndTrial": []}

    def timed(name, call, *args, **kwargs):
        started = time.perf_counter()
        result = call(*args, **kwargs)
        times[name].append(time.perf_counter() - started)
        return result

    metrics = {"loss": 0.5, "accuracy": 0.8, "val_loss": 0.6}
    for i in range(calls):
        trial = timed("CreateTrial", client.create_trial, "bench-worker")
        assert trial.status == "RUNNING", trial.status
        timed("heartbeat (GetTrial)", ktcompat.send_heartbeat, client, trial.trial_id,
              timeout=10)
        timed("GetTrial", client.get_trial, trial.trial_id)
        timed("UpdateTrial", client.update_trial, trial.trial_id,
              {**metrics, "val_accuracy": 0.5 + 0.4 * (i % 7) / 7}, step=9)
        trial.status = ktcompat.TrialStatus.COMPLETED
        timed("EndTrial", client.end_trial, trial)
    return times


def spawn_seconds(code: str, runs: int) -> list[float]:
    """Wall time from spawning `python -c code` to its exit."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def trial_process_start(runs: int, workdir: Path) -> dict[str, list[float]]:
    """Spawn to run reloaded, against the interpreter and TensorFlow imports."""
    from resnet_tuner.run.options import DIGITS, SearchOptions
    from resnet_tuner.run.search import open_tuner, prepare_run

    run_dir = workdir / "run"
    options = SearchOptions(data_dir=DIGITS, out=str(run_dir), space="quick", tuner="random",
                            max_trials=4, image_size=32)
    space, data = prepare_run(options, verbose=0, summary=False)
    open_tuner(options, run_dir, space, data, verbose=0).save()
    reload = ("import sys; from resnet_tuner import console; console.load_tensorflow(); "
              "from resnet_tuner.run.search import load_run; "
              f"load_run({str(run_dir)!r}, verbose=0)")
    return {"python -c pass": spawn_seconds("pass", runs),
            "import tensorflow": spawn_seconds("import tensorflow", runs),
            "trial process start (load_run)": spawn_seconds(reload, runs)}


def quick_epoch_seconds() -> float:
    """Seconds of one epoch (the second: the first traces) of the quick space's default model."""
    import keras
    import keras_tuner as kt

    from resnet_tuner import ResNetHyperModel, datasets

    data = datasets.digits(image_size=(32, 32))
    hypermodel = ResNetHyperModel("quick", input_shape=data.input_shape,
                                  num_classes=data.num_classes)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(
        time.perf_counter()))
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
        hypermodel.fit(hp, model, data, epochs=3, verbose=0, callbacks=[timer])
    return statistics.median([b - a for a, b in zip(ends, ends[1:], strict=False)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="trials of RPCs (default 200)")
    parser.add_argument("--starts", type=int, default=3, help="process starts (default 3)")
    parser.add_argument("--no-epoch", action="store_true", help="skip the training epoch")
    args = parser.parse_args()
    print(f"chief overhead on {os.cpu_count()} CPU(s), load {os.getloadavg()[0]:.1f}; "
          f"{args.calls} trials of RPCs, {args.starts} process starts")

    with tempfile.TemporaryDirectory() as tmp:
        noop = median_ms(noop_round_trip(args.calls))
        times = trial_calls(args.calls, Path(tmp))
        print(f"\n(a) RPC round trip, median of {args.calls} (baseline: no-op gRPC call "
              f"{noop:.2f} ms)")
        per_trial = 0.0
        for name, samples in times.items():
            ms = median_ms(samples)
            if name != "heartbeat (GetTrial)":
                per_trial += ms
            tail = median_ms(samples[-50:]) if len(samples) >= 100 else ms
            head = median_ms(samples[:50]) if len(samples) >= 100 else ms
            print(f"  {name:22s} {ms:7.2f} ms  {ms / noop:5.1f}x no-op   "
                  f"(first 50: {head:.2f} ms, last 50: {tail:.2f} ms)")
        heartbeat = median_ms(times["heartbeat (GetTrial)"])
        print(f"  per trial (4 calls)    {per_trial:7.2f} ms; heartbeats add {heartbeat:.2f} ms "
              f"every {2.0:g} s of training per worker")

        starts = trial_process_start(args.starts, Path(tmp))
        python = median_ms(starts["python -c pass"])
        print(f"\n(b) process start, median of {args.starts} (baseline: python -c pass "
              f"{python / 1000:.2f} s)")
        for name, samples in starts.items():
            ms = median_ms(samples)
            print(f"  {name:32s} {ms / 1000:6.2f} s  {ms / python:5.1f}x python")
        start_s = median_ms(starts["trial process start (load_run)"]) / 1000

    epoch = None if args.no_epoch else quick_epoch_seconds()
    if epoch is not None:
        print(f"\n(c) one epoch, quick space's default model, digits 32x32: {epoch:.2f} s "
              f"(= {epoch * 1000 / per_trial:.0f}x the chief's per-trial RPC time; the trial "
              f"process start = {start_s / epoch:.1f} epochs)")

    capacity = 1000 / per_trial
    # A heartbeat every 2 s per worker takes chief time too: N workers with
    # trials of T s cost N/T * per_trial + N/2 * heartbeat ms per second.
    print(f"\nchief capacity ~ 1 / {per_trial:.1f} ms = {capacity:.0f} trials/s "
          "(heartbeats aside)")
    for workers, trial_s in ((8, 60), (64, 60), (256, 30), (1000, 10)):
        busy = workers / trial_s * per_trial + workers / 2.0 * heartbeat
        print(f"  {workers:5d} workers, {trial_s:3d} s trials: the chief is busy "
              f"{busy / 10:.1f} % of the time")
    workers_at_capacity = 1000 / (per_trial / 60 + heartbeat / 2.0)
    print(f"  it saturates at ~{workers_at_capacity:.0f} workers with 60 s trials")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chief_overhead.json").write_text(json.dumps({
        "calls": args.calls, "starts": args.starts, "noop_ms": noop,
        "rpc_ms": {name: median_ms(samples) for name, samples in times.items()},
        "per_trial_ms": per_trial, "start_s": {name: median_ms(samples) / 1000
                                               for name, samples in starts.items()},
        "epoch_s": epoch, "trials_per_s": capacity, "workers_at_capacity_60s": workers_at_capacity,
    }, indent=1))


if __name__ == "__main__":
    main()
