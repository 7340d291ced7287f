"""Distributed search (a chief and workers as separate processes on 127.0.0.1) and kill -9 resume.

The tests that start real `resnet-tuner search` processes are marked `slow`
(about a minute each on 2 cores; `pytest -m slow` runs them), kept small with a
tiny space, a tiny folder and few trials. The chief's requeue logic and the
resume checks have fast unit tests in test_run.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_cli import TINY_SPACE, make_folder

from resnet_tuner.run import distribute


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, log_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
           "RESNET_TUNER_CACHE": str(log_path.parent / "cache")}
    for name in (distribute.ENV_ID, distribute.ENV_IP, distribute.ENV_PORT):
        env.pop(name, None)
    log = open(log_path, "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "resnet_tuner.cli", "search", *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log, proc.log_path = log, log_path
    return proc


def finish(proc, timeout=300):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.log.close()
    return proc.log_path.read_text()


def wait_for(predicate, timeout=180, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def processes_mentioning(text):
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


def trials(out):
    found = {}
    for path in sorted((out / "tuner").glob("trial_*/trial.json")):
        record = json.loads(path.read_text())
        found[record["trial_id"]] = record
    return found


def ran(logs):
    """Trial ids each worker finished, from the workers' own lines."""
    result = {}
    for name, text in logs.items():
        result[name] = [line.split()[3] for line in text.splitlines()
                        if line.startswith(f"worker {name}: trial ")]
    return result


def chief_and_two_workers(common, tmp_path):
    """Runs a chief and workers w1, w2 with the same arguments to the end; all exit 0.

    Returns the chief's log and each worker's log.
    """
    address = f"127.0.0.1:{free_port()}"
    chief = start([*common, "--chief", address], tmp_path / "chief.log")
    workers = {name: start([*common, "--worker", address, "--worker-id", name],
                           tmp_path / f"{name}.log") for name in ("w1", "w2")}
    logs = {name: finish(proc) for name, proc in workers.items()}
    chief_log = finish(chief, timeout=120)
    assert chief.returncode == 0, chief_log[-3000:]
    for name, proc in workers.items():
        assert proc.returncode == 0, logs[name][-3000:]
    return chief_log, logs


@pytest.fixture
def setup(tmp_path):
    folder = make_folder(tmp_path / "shapes", per_class=10)
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE.replace("epochs = 1", "epochs = 2"))
    out = tmp_path / "run"
    common = [str(folder), "--out", str(out), "--space", str(space), "--tuner", "random",
              "--max-trials", "4", "--image-size", "16", "--split", "0.4,0.3,0.3"]
    return tmp_path, out, common


@pytest.mark.slow
def test_chief_and_two_workers_run_every_trial_once(setup):
    tmp_path, out, common = setup
    chief_log, logs = chief_and_two_workers(common, tmp_path)
    finished = ran(logs)
    every = sorted(finished["w1"] + finished["w2"])
    assert every == sorted(trials(out)) and len(every) == 4, finished  # each trial exactly once
    assert finished["w1"] and finished["w2"], finished  # both workers took trials
    assert all(t["status"] == "COMPLETED" for t in trials(out).values())
    assert "every trial has ended" in chief_log
    assert "trial 4 of 4" in chief_log
    assert (out / "best" / "model.keras").is_file() and "best model exported" in chief_log
    runners = {json.loads(p.read_text())["tuner_id"]
               for p in (out / "tuner").glob("trial_*/history.json")}
    assert runners == {"w1", "w2"}


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_trial(setup):
    tmp_path, out, common = setup
    address = f"127.0.0.1:{free_port()}"
    chief = start([*common, "--chief", address, "--worker-timeout", "6"],
                  tmp_path / "chief.log")
    w1 = start([*common, "--worker", address, "--worker-id", "w1"], tmp_path / "w1.log")
    wait_for(lambda: "running trial" in (tmp_path / "w1.log").read_text(), what="w1's trial")
    w1.send_signal(signal.SIGKILL)
    finish(w1)
    w2 = start([*common, "--worker", address, "--worker-id", "w2"], tmp_path / "w2.log")
    w2_log = finish(w2)
    chief_log = finish(chief, timeout=120)
    assert w2.returncode == 0, w2_log[-3000:]
    assert chief.returncode == 0, chief_log[-3000:]
    assert "no word from worker w1" in chief_log
    assert sorted(ran({"w2": w2_log})["w2"]) == sorted(trials(out)) and len(trials(out)) == 4
    assert all(t["status"] == "COMPLETED" for t in trials(out).values())
    assert (out / "best" / "model.keras").is_file()


@pytest.mark.slow
def test_a_worker_without_a_chief_fails_with_a_message(tmp_path):
    args = ["digits", "--out", str(tmp_path / "run"), "--worker", f"127.0.0.1:{free_port()}",
            "--worker-id", "w1", "--connect-timeout", "1"]
    started = time.monotonic()
    text = finish(start(args, tmp_path / "w.log"), timeout=120)
    assert "resnet-tuner: error: Could not reach the chief at 127.0.0.1:" in text, text[-2000:]
    assert "Traceback" not in text
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("args, message", [
    (["--chief", "127.0.0.1:1", "--worker", "127.0.0.1:1"], "not both"),
    (["--worker", "localhost"], "expected HOST:PORT"),
    (["--worker", "127.0.0.1:1", "--worker-id", "chief-2"], "not contain 'chief'"),
    (["--worker-id", "w1"], "--worker-id needs --worker"),
])
def test_bad_cluster_flags(args, message, tmp_path, capsys, monkeypatch):
    from resnet_tuner import cli

    for name in (distribute.ENV_ID, distribute.ENV_IP, distribute.ENV_PORT):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["search", "digits", "--out", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_then_rerun_completes_like_an_uninterrupted_run(setup):
    tmp_path, out, common = setup
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE.replace("epochs = 1", "epochs = 40"))  # seconds per trial
    args = [*common]
    args[args.index("--max-trials") + 1] = "3"
    first = start(args, tmp_path / "first.log")
    wait_for(lambda: "trial 1 of 3" in (tmp_path / "first.log").read_text(), what="trial 1")
    wait_for(lambda: len(list((out / "tuner").glob("trial_*"))) >= 2, what="trial 2 to start")
    first.send_signal(signal.SIGKILL)
    finish(first)
    # The trial runs in a child process: it must die with the killed command.
    wait_for(lambda: not processes_mentioning(str(out)), timeout=15, what="the trial process")
    kept = (out / "tuner" / "trial_0" / "trial.json").read_text()
    assert len([t for t in trials(out).values() if t["status"] == "COMPLETED"]) == 1
    second_log = finish(start(args, tmp_path / "second.log"))
    assert "best model exported" in second_log, second_log[-3000:]
    assert (out / "tuner" / "trial_0" / "trial.json").read_text() == kept  # not rerun
    assert "trial 3 of 3" in second_log and "trial 1 of 3" not in second_log

    # An uninterrupted run draws the same hyperparameters: random search's draws
    # depend on the seed only, not on scores, so the oracle of a fresh run with
    # the same options gives them without training anything.
    resumed, fresh = trials(out), fresh_draws(out, tmp_path / "clean", len(trials(out)))
    assert sorted(resumed) == sorted(fresh) and len(resumed) == 3
    for trial_id, values in fresh.items():
        assert resumed[trial_id]["status"] == "COMPLETED"
        assert resumed[trial_id]["hyperparameters"]["values"] == values


def fresh_draws(run_dir, clean_dir, count):
    """Trial id -> hyperparameters of the first `count` trials a fresh run would draw."""
    from resnet_tuner.run.search import load_run
    from resnet_tuner.run.tuners import make_tuner

    tuner, _, options = load_run(run_dir)
    clean = make_tuner(options, tuner.hypermodel, clean_dir)  # as the run built its own
    draws = {}
    for i in range(count):
        trial = clean.oracle.create_trial(f"t{i}")
        draws[trial.trial_id] = trial.hyperparameters.values
        clean.oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5})
        trial.status = "COMPLETED"
        clean.oracle.end_trial(trial)
    return draws
