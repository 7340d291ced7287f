"""Distributed search edges (issue 14): Hyperband on a chief and workers, a chief killed
with SIGKILL and restarted with the same command.

Real `resnet-tuner search` processes on 127.0.0.1, so `slow` (`pytest -m slow`),
kept small like test_distributed.py's: a tiny space, a folder of 30 small
images, one or two epochs. The chief's bookkeeping behind them (running trials
kept across a restart, a repeated EndTrial ignored) has fast unit tests here too.
"""

import json
import signal
import time

import pytest
from test_cli import TINY_SPACE, make_folder
from test_distributed import chief_and_two_workers, finish, free_port, ran, start, trials, wait_for

from resnet_tuner.run import distribute, ktcompat

#: Six configurations (flip x learning rate): enough new ones for Hyperband's brackets.
SIX_CONFIGS = TINY_SPACE.replace("learning_rate = 0.01", "learning_rate = [0.01, 0.02, 0.005]")


@pytest.fixture
def shapes(tmp_path):
    return make_folder(tmp_path / "shapes", per_class=10)


def common_args(folder, out, space):
    return [str(folder), "--out", str(out), "--space", str(space), "--image-size", "16",
            "--split", "0.4,0.3,0.3"]


@pytest.mark.slow
def test_hyperband_on_a_chief_and_two_workers_promotes_and_runs_each_trial_once(tmp_path,
                                                                                 shapes):
    # --epochs 2 --hyperband-factor 2: bracket 1 trains two models for 1 epoch and
    # promotes the better one to epoch 2 (from its checkpoint); bracket 0 trains two
    # models for 2 epochs. Five trials in all.
    space = tmp_path / "six.toml"
    space.write_text(SIX_CONFIGS)
    out = tmp_path / "run"
    common = [*common_args(shapes, out, space), "--tuner", "hyperband", "--epochs", "2",
              "--hyperband-factor", "2", "--max-trials", "10",
              "--keep-checkpoints", "0"]  # the parent's checkpoint is read below
    chief_log, logs = chief_and_two_workers(common, tmp_path)

    records = trials(out)
    finished = ran(logs)
    every = sorted(finished["w1"] + finished["w2"])
    assert every == sorted(records) and len(every) == 5, finished  # each trial exactly once
    assert all(t["status"] == "COMPLETED" for t in records.values()), records
    assert "trial 5 of 5" in chief_log and "every trial has ended" in chief_log
    assert (out / "best" / "model.keras").is_file() and "best model exported" in chief_log

    values = {trial_id: t["hyperparameters"]["values"] for trial_id, t in records.items()}
    promoted = {trial_id: v for trial_id, v in values.items() if v.get("tuner/trial_id")}
    assert len(promoted) == 1, values
    (child, hps), = promoted.items()
    parent = hps["tuner/trial_id"]
    assert values[parent]["tuner/epochs"] == 1 and records[parent]["status"] == "COMPLETED"
    assert (hps["tuner/initial_epoch"], hps["tuner/epochs"]) == (1, 2)
    # The promoted trial trained epoch 2 only, starting from its parent's checkpoint
    # (keras-tuner loads it from the shared run directory; missing, the trial fails).
    history = json.loads((out / "tuner" / f"trial_{child}" / "history.json").read_text())
    assert len(history["history"]["loss"]) == 1, history
    assert (out / "tuner" / f"trial_{parent}" / "checkpoint.weights.h5").is_file()
    # Every bracket ran: two 1-epoch models, their promotion, two 2-epoch models.
    # (Not read from "tuner/bracket": keras-tuner writes there the bracket it is
    # filling when it promotes, here already bracket 0 as a worker went on to it.)
    rounds = sorted((v["tuner/round"], v["tuner/initial_epoch"], v["tuner/epochs"])
                    for v in values.values())
    assert rounds == [(0, 0, 1), (0, 0, 1), (0, 0, 2), (0, 0, 2), (1, 1, 2)], rounds
    runners = {json.loads(p.read_text())["tuner_id"]
               for p in (out / "tuner").glob("trial_*/history.json")}
    assert runners == {"w1", "w2"}


def flock_is_free(path) -> bool:
    import fcntl
    import os

    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases the lock taken here
    return True


def running_now(log_text, name):
    """The trial a worker's log says it is running, or None between trials."""
    started = [line.split()[-1] for line in log_text.splitlines()
               if line.startswith(f"worker {name}: running trial ")]
    ended = {line.split()[3] for line in log_text.splitlines()
             if line.startswith(f"worker {name}: trial ")}
    return started[-1] if started and started[-1] not in ended else None


@pytest.mark.slow
def test_a_chief_killed_and_restarted_resumes_and_its_workers_carry_on(tmp_path, shapes):
    # w1 is left alone: it must outlast the chief's restart by itself. w2 is killed
    # with the chief and restarted with its same command: it gets its trial back.
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE.replace("epochs = 1", "epochs = 30"))  # seconds per trial
    out = tmp_path / "run"
    common = [*common_args(shapes, out, space), "--tuner", "random", "--max-trials", "4"]
    address = f"127.0.0.1:{free_port()}"
    chief_args = [*common, "--chief", address, "--worker-timeout", "30"]
    worker_args = {name: [*common, "--worker", address, "--worker-id", name]
                   for name in ("w1", "w2")}
    chief = start(chief_args, tmp_path / "chief.log")
    w1 = start(worker_args["w1"], tmp_path / "w1.log")
    w2 = start(worker_args["w2"], tmp_path / "w2.log")

    def mid_search():
        done = [t for t in trials(out).values() if t["status"] == "COMPLETED"]
        return done and running_now((tmp_path / "w2.log").read_text(), "w2") and running_now(
            (tmp_path / "w1.log").read_text(), "w1")

    wait_for(mid_search, what="a finished trial and both workers training")
    chief.send_signal(signal.SIGKILL)
    w2.send_signal(signal.SIGKILL)
    finish(chief)
    w2_first = finish(w2)
    lost = running_now(w2_first, "w2")
    kept = {trial_id: (out / "tuner" / f"trial_{trial_id}" / "trial.json").read_text()
            for trial_id, t in trials(out).items() if t["status"] == "COMPLETED"}
    assert kept and lost not in kept
    # The kernel dropped the killed chief's flock: the directory is free at once.
    assert flock_is_free(out / ".search.lock")
    time.sleep(3)  # the chief stays down a while; w1 keeps training or waits

    chief = start(chief_args, tmp_path / "chief2.log")
    w2 = start(worker_args["w2"], tmp_path / "w2b.log")
    w2_second = finish(w2)
    w1_log = finish(w1)
    chief_log = finish(chief, timeout=120)
    assert chief.returncode == 0, chief_log[-3000:]
    assert w1.returncode == 0, w1_log[-3000:]  # carried on without a restart
    assert w2.returncode == 0, w2_second[-3000:]
    assert "in use by another search" not in chief_log
    assert f"trial {lost} stays with worker w2" in chief_log, chief_log[-3000:]

    finished = ran({"w1": w1_log, "w2": w2_first + w2_second})
    every = sorted(finished["w1"] + finished["w2"])
    assert every == sorted(trials(out)) and len(every) == 4, finished  # each counted once
    assert lost in ran({"w2": w2_second})["w2"]  # the restarted w2 ran its lost trial
    assert all(t["status"] == "COMPLETED" for t in trials(out).values())
    for trial_id, text in kept.items():  # finished trials were kept, not rerun
        assert (out / "tuner" / f"trial_{trial_id}" / "trial.json").read_text() == text
    end_order = json.loads((out / "tuner" / "oracle.json").read_text())["end_order"]
    assert sorted(end_order) == every, end_order
    assert "trial 4 of 4" in chief_log and "every trial has ended" in chief_log
    assert (out / "best" / "model.keras").is_file() and "best model exported" in chief_log


# ------------------------------------------------------------------ fast: the chief's books


def test_a_restarted_chief_keeps_running_trials_with_their_workers(tmp_path):
    import keras_tuner as kt

    from resnet_tuner.run.tuners import RandomSearchOracle

    def oracle():
        hp = kt.HyperParameters()
        hp.Int("units", 1, 100)
        made = RandomSearchOracle(objective="val_loss", hyperparameters=hp, max_trials=3, seed=1)
        made._set_project_dir(str(tmp_path), "project")
        return made

    before = oracle()
    running = before.create_trial("w1")
    restarted = oracle()
    restarted.reload()
    said = []
    assert distribute.resume_running(restarted, log=said.append) == {"w1": running.trial_id}
    assert said == [f"chief: resuming; trial {running.trial_id} stays with worker w1 (back in "
                    "the queue if it does not report within --worker-timeout)"]
    # w1 silent for longer than the timeout: its trial goes back in the queue.
    seen = {}
    assert distribute.requeue_silent_workers(restarted, seen, 0.0, 10.0, said.append) == []
    assert distribute.requeue_silent_workers(restarted, seen, 11.0, 10.0,
                                             said.append) == [running.trial_id]
    assert restarted.create_trial("w2").trial_id == running.trial_id
    # w1 was alive after all and ends it first; w2's end later counts nothing.
    restarted.update_trial(running.trial_id, {"val_loss": 1.0})
    ended = ktcompat.Trial.from_proto(restarted.trials[running.trial_id].to_proto())
    ended.status = ktcompat.TrialStatus.COMPLETED  # what each worker's EndTrial carries
    assert ktcompat.end_once(restarted, ended) is True
    assert ktcompat.end_once(restarted, ended) is False
    assert restarted.end_order == [running.trial_id] and not restarted.ongoing_trials
    assert (restarted.trials[running.trial_id].hyperparameters.values
            == running.hyperparameters.values)
