"""--time-budget / time_budget=: the deadline, the final training, the median rule, resume."""

import argparse
import json
import sys
import time

import keras
import numpy as np
import pytest

from resnet_tuner.run import budget as _budget
from resnet_tuner.run.options import duration, parse_duration

TINY_SPACE = {
    "model": {"stem": "cifar", "stage_depths": [[1, 1]], "base_width": [4, 8]},
    "train": {"learning_rate": [0.01, 0.003], "batch_size": 16, "epochs": 2},
}


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("90s", 90), ("1h30m", 5400),
                                           ("1.5h", 5400), ("45", 45), (" 2m 30s ", 150),
                                           (12.5, 12.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30x", "m", "-5m", "0", "", "1e3"])
def test_bad_durations_say_what_is_expected(text):
    with pytest.raises((ValueError, argparse.ArgumentTypeError), match="duration"):
        duration(text)


def test_a_new_session_counts_what_earlier_sessions_spent(tmp_path):
    first = _budget.TimeBudget.open(tmp_path, 100, session_started=1000.0)
    assert first.earlier == 0
    first.save()  # as if at time.time(): only check the bookkeeping below
    record = json.loads((tmp_path / _budget.BUDGET_FILE).read_text())
    record.update(spent=40.0, session_started=1000.0, earlier=0.0)
    (tmp_path / _budget.BUDGET_FILE).write_text(json.dumps(record))
    # Another process of the same session: the clock runs from the session's start.
    same = _budget.TimeBudget.open(tmp_path, 100, session_started=1000.0)
    assert same.earlier == 0 and same.spent(now=1030.0) == 30.0
    # A later session (a rerun days later): the 40 s spent count, the pause does not.
    later = _budget.TimeBudget.open(tmp_path, 100, session_started=9000.0)
    assert later.earlier == 40.0
    assert later.spent(now=9010.0) == 50.0 and later.remaining(now=9010.0) == 50.0
    assert later.end == 9000.0 + 60.0
    assert later.training_end == later.end - _budget.export_reserve(100)
    assert later.search_end == later.training_end - 50.0  # final_training 0.5 of 100 s


def _median_rule(others, values, **kwargs):
    rule = _budget.BelowMedian(others, "val_accuracy", "max", **kwargs)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.stop_training = False
    rule.set_model(model)
    for epoch, value in enumerate(values):
        rule.on_epoch_end(epoch, {"val_accuracy": value})
        if rule.model.stop_training:
            break
    return rule


def test_a_trial_clearly_behind_the_median_is_stopped():
    others = [[0.6, 0.8, 0.9], [0.5, 0.7, 0.85], [0.55, 0.75, 0.8]]
    behind = _median_rule(others, [0.2, 0.3, 0.4])
    assert behind.stopped == 1  # after its first epoch: 0.2 < median 0.55
    ahead = _median_rule(others, [0.6, 0.8, 0.95])
    assert ahead.stopped is None
    # Compared at the same epoch, best so far: 0.56 is ahead of the median at epoch 1
    # (0.55), 0.76 at epoch 2 (0.75); at epoch 3 its best (0.76) is behind 0.85.
    assert _median_rule(others, [0.56, 0.76, 0.5]).stopped == 3


def test_the_median_rule_waits_for_enough_trials_and_epochs():
    assert _median_rule([[0.9], [0.9]], [0.1]).stopped is None  # 2 < min_trials 3
    assert _median_rule([[0.9, 0.9]] * 3, [0.1, 0.1], min_epochs=2).stopped == 2
    # Trials that trained fewer epochs do not count at later epochs.
    assert _median_rule([[0.9]] * 3, [0.95, 0.1]).stopped is None


def test_the_deadline_stops_training_after_the_current_batch_and_validates():
    x, y = np.zeros((64, 4), "float32"), np.zeros((64,), "int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "sparse_categorical_crossentropy")
    deadline = _budget.Deadline(time.time() + 0.5)
    started = time.time()
    history = model.fit(x, y, batch_size=1, epochs=10_000, validation_data=(x, y), verbose=0,
                        callbacks=[deadline])
    assert deadline.stopped and time.time() - started < 30
    assert len(history.history["val_loss"]) == len(history.history["loss"]) >= 1


def _tuner(tmp_path, budget, max_trials=50, **kwargs):
    from resnet_tuner import ResNetHyperModel
    from resnet_tuner.run.tuners import RandomSearch

    hypermodel = ResNetHyperModel(TINY_SPACE, input_shape=(16, 16, 3), num_classes=3)
    return RandomSearch(hypermodel, objective="val_accuracy", max_trials=max_trials, seed=1,
                        directory=str(tmp_path), project_name="p", time_budget=budget,
                        **kwargs)


def _histories(tmp_path):
    return {p.parent.name.removeprefix("trial_"): json.loads(p.read_text())
            for p in (tmp_path / "p").glob("trial_*/history.json")}


def test_a_budget_stops_on_time_trains_the_best_again_and_exports(tmp_path, tiny_images):
    from resnet_tuner import export_best

    x, y = tiny_images(n=96, size=16)
    data = (x[:64], y[:64])
    fit = {"validation_data": (x[64:80], y[64:80]), "epochs": 2, "verbose": 0}
    _tuner(tmp_path, None, max_trials=1).search(*data, **fit)  # one trial, no budget
    # Resumed with a budget whose search share is already over (0.9 kept for the final
    # training): the best configuration trains again, its epochs filling the time left.
    started = time.time()
    tuner = _tuner(tmp_path, 30, max_trials=1, final_training=0.9, median_stopping=True)
    tuner.search(*data, **fit)
    assert time.time() - started <= 30 + 3  # the last batch and its validation may run over
    trials = tuner.oracle.trials
    assert len(trials) == 2  # past max_trials: the final training is the budget's
    final = trials["1"].hyperparameters.values
    assert _budget.is_final(trials["1"]) and final[_budget.FINAL_FROM] == "0"
    assert final["learning_rate"] == trials["0"].hyperparameters.values["learning_rate"]
    assert final[_budget.FINAL_EPOCHS] >= _budget.MIN_FINAL_EPOCHS
    history = _histories(tmp_path)["1"]
    assert 1 <= len(history["history"]["loss"]) == len(history["epoch_times"])
    assert len(history["history"]["loss"]) <= _budget.final_epochs_bound(
        final[_budget.FINAL_EPOCHS])
    assert history["ended"] <= tuner.budget.end + 3
    assert tuner.oracle.remaining_trials() == 0
    recorded = json.loads((tmp_path / "p" / _budget.BUDGET_FILE).read_text())
    assert recorded["seconds"] == 30 and recorded["spent"] <= 30 + 3
    bundle = export_best(tuner, tmp_path / "best", test=(x[80:], y[80:]))
    assert {"model.keras", "metrics.json", "config.json", "MODEL_CARD.md"} <= {
        p.name for p in bundle.iterdir()}
    card = (bundle / "MODEL_CARD.md").read_text()
    if json.loads((bundle / "hyperparameters.json").read_text())["trial"]["trial_id"] == "1":
        assert "final training" in card


def test_a_resumed_search_counts_the_budget_already_spent(tmp_path, tiny_images):
    x, y = tiny_images(n=96, size=16)
    data = (x[:64], y[:64])
    fit = {"validation_data": (x[64:], y[64:]), "epochs": 1, "verbose": 0}

    def search(seconds):
        started = time.time()
        tuner = _tuner(tmp_path, seconds, final_training=0)
        tuner.search(*data, **fit)
        spent = json.loads((tmp_path / "p" / _budget.BUDGET_FILE).read_text())["spent"]
        return len(tuner.oracle.trials), time.time() - started, spent

    ran, took, spent = search(8)
    assert ran >= 1 and abs(spent - took) < 2  # what the search took is what it spent
    # Resumed with the same budget: only what is left of it is used.
    ran_again, took_again, spent_again = search(8)
    assert took_again <= 8 - spent + 3 and spent_again <= 8 + 3
    assert abs(spent_again - spent - took_again) < 2
    # A larger budget on resume gives the difference.
    more, _, spent_more = search(spent_again + 20)
    assert more > ran_again and spent_more <= spent_again + 20 + 3


def test_the_cli_clock_starts_at_the_call_when_main_is_called_from_python(tmp_path, monkeypatch):
    """Only the program's own first command counts from the import (the interpreter's
    start-up is the user's time); a script or test calling `main([...])` imported us long
    before, and its budget starts at the call (CI once lost 40 s of a 75 s budget to it)."""
    from resnet_tuner import cli

    monkeypatch.setattr(cli, "_started", {"at": time.time() - 600, "first": True})
    cli.main(["trials", str(tmp_path / "none")])
    assert time.time() - cli._started["at"] < 60
    monkeypatch.setattr(cli, "_started", {"at": time.time() - 600, "first": True})
    monkeypatch.setattr(sys, "argv", ["resnet-tuner", "trials", str(tmp_path / "none")])
    cli.main()
    assert time.time() - cli._started["at"] >= 600


@pytest.mark.slow
def test_the_cli_keeps_to_its_budget_across_trial_processes(tmp_path, capfd):
    """The command line's series of trial processes shares one budget, data and export
    included: the whole command ends within it and leaves a complete bundle."""
    from resnet_tuner import cli

    out = tmp_path / "run"
    started = time.time()
    assert cli.main(["search", "digits", "--out", str(out), "--image-size", "16",
                     "--time-budget", "75s", "--tuner", "random", "--max-trials", "40",
                     "--epochs", "2", "--median-stopping"]) == 0
    took = time.time() - started
    printed = capfd.readouterr().out
    assert took <= 75 + 15, printed  # 2 cores shared with other tests: some slack
    assert "within 1m15s" in printed and "of the budget left" in printed
    assert (out / "best" / "model.keras").is_file()
    timings = json.loads((out / "timings.json").read_text())
    assert timings["data"] >= 0 and timings["export"] > 0
    recorded = json.loads((out / "tuner" / _budget.BUDGET_FILE).read_text())
    assert recorded["spent"] <= 75
    histories = list((out / "tuner").glob("trial_*/history.json"))
    assert 1 <= len(histories) < 40


def test_the_final_trainings_learning_rate_decays_over_the_time_left():
    from resnet_tuner.training import CosineDecayPerStep

    now = [1000.0]
    schedule = CosineDecayPerStep(0.1, epochs=50, ends_at=1100.0)
    schedule.clock = lambda: now[0]
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    schedule.set_model(model)
    schedule.set_params({"steps": 10, "epochs": 50})
    schedule.on_train_begin()
    rates = []
    for t in (1000.0, 1050.0, 1100.0, 1200.0):  # start, halfway, the deadline, past it
        now[0] = t
        schedule.on_train_batch_begin(0)
        rates.append(float(model.optimizer.learning_rate.numpy()))
    assert rates[0] == pytest.approx(0.1)
    assert rates[1] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))
    assert rates[2] == rates[3] == pytest.approx(0.001)  # epoch 0 of 50: time decides
