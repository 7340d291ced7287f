"""The HTML report: class names in any script draw without tofu or glyph warnings, and
nothing in the plots is cut off."""

import contextlib
import csv
import io
import json
import logging
import os
import subprocess
import sys
import warnings

import matplotlib.pyplot as plt
import pytest
from matplotlib import font_manager

from resnet_tuner import report

CJK_NAMES = ["长城", "flower 花", "cat"]
MATRIX = [[5, 1, 0], [0, 6, 0], [2, 0, 4]]


def glyphs(family):
    """Code points the font matplotlib picks for `family` has a real glyph for."""
    path = font_manager.findfont(font_manager.FontProperties(family=[family]),
                                 fallback_to_default=False)
    return {code for code, glyph in font_manager.get_font(path).get_charmap().items() if glyph}


def drawable(label):
    """Every character of a tick label is in one of the fonts of its family list."""
    covered = set().union(*(glyphs(f) for f in label.get_fontfamily()))
    return all(ord(ch) in covered for ch in label.get_text())


@contextlib.contextmanager
def font_log():
    """The lines matplotlib's font manager logs at WARNING inside the block."""
    lines = []

    class Catch(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger, catch = logging.getLogger("matplotlib.font_manager"), Catch(logging.WARNING)
    logger.addHandler(catch)
    try:
        yield lines
    finally:
        logger.removeHandler(catch)


def draw(fig):
    """Renders `fig` as the report does, returning the warnings matplotlib raised
    and the lines its font manager logged while drawing."""
    with font_log() as lines, warnings.catch_warnings(record=True) as caught, \
            report.quiet_font_weights():
        warnings.simplefilter("always")
        fig.canvas.draw()
    return [str(w.message) for w in caught] + lines


def inside(fig, artist):
    box = artist.get_window_extent()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def cjk_families():
    """The families that draw `CJK_NAMES` on this machine, or None (CI has no CJK font)."""
    return report.label_fonts(CJK_NAMES, report.font_families())


def test_label_fonts_adds_a_fallback_only_for_missing_glyphs():
    # cmr10 (bundled with matplotlib) has ASCII only; DejaVu Sans has Latin-1 and Cyrillic.
    assert 0x416 not in glyphs("cmr10") and 0x416 in glyphs("DejaVu Sans")
    assert report.label_fonts(["cat", "dog"], ["cmr10", "DejaVu Sans"]) == ["cmr10"]
    assert report.label_fonts(["café", "Жук"], ["cmr10", "DejaVu Sans"]) == ["cmr10",
                                                                             "DejaVu Sans"]
    assert report.label_fonts(["café"], ["cmr10", "no such font"]) is None
    # matplotlib's Last Resort font maps every code point to a box: never a fallback.
    assert report.label_fonts(["长城"], ["DejaVu Sans", "Last Resort High-Efficiency"]) is None


def test_names_draw_with_a_fallback_font_when_one_has_the_glyphs():
    names = ["café", "Жук", "$5 bill"]  # "$" would start mathtext
    fig, legend = report.confusion_matrix_figure(MATRIX, names, "title",
                                                 families=["cmr10", "DejaVu Sans"])
    assert draw(fig) == []
    labels = fig.axes[0].get_xticklabels() + fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == names + names
    assert all(t.get_fontfamily() == ["cmr10", "DejaVu Sans"] for t in labels)
    assert all(drawable(t) for t in labels)
    assert legend is None
    plt.close(fig)


def test_names_no_font_draws_become_indices_with_a_legend():
    fig, legend = report.confusion_matrix_figure(MATRIX, CJK_NAMES, "title",
                                                 families=["DejaVu Sans"])
    assert not any("Glyph" in w for w in draw(fig))
    labels = fig.axes[0].get_xticklabels() + fig.axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == ["0", "1", "2"] * 2
    assert all(drawable(t) for t in labels)
    assert legend == list(enumerate(CJK_NAMES))
    plt.close(fig)


@pytest.mark.skipif(cjk_families() is None, reason="no installed font has CJK glyphs")
def test_cjk_names_draw_with_an_installed_cjk_font():
    fonts = cjk_families()
    assert fonts[0] == report.font_families()[0] and len(fonts) == 2  # default + one CJK font
    with font_log() as lines:  # choosing the fonts logs nothing either
        fig, legend = report.confusion_matrix_figure(MATRIX, CJK_NAMES, "title")
    assert draw(fig) == [] and lines == []
    labels = fig.axes[0].get_xticklabels()
    assert [t.get_text() for t in labels] == CJK_NAMES and all(drawable(t) for t in labels)
    assert legend is None
    plt.close(fig)


def test_title_and_long_labels_stay_inside_the_figure():
    names = [f"a rather long class name number {i}" for i in range(3)]
    fig, _ = report.confusion_matrix_figure(
        MATRIX, names, "Test confusion matrix\naccuracy 66.7 % on 18 images",
        families=["DejaVu Sans"])
    draw(fig)
    ax = fig.axes[0]
    assert inside(fig, ax.title)
    assert all(inside(fig, t) for t in ax.get_xticklabels() + ax.get_yticklabels())
    plt.close(fig)


def make_run(root, classes):
    (root / "best").mkdir(parents=True)
    (root / "run.json").write_text(json.dumps({"options": {"space": "quick", "tuner": "random"},
                                               "class_names": classes}))
    (root / "best" / "classes.json").write_text(json.dumps(classes, ensure_ascii=False))
    (root / "best" / "metrics.json").write_text(json.dumps(
        {"confusion_matrix": MATRIX, "accuracy": 15 / 18, "images": 18}))
    return root


@pytest.mark.parametrize("families, names_drawn", [(["DejaVu Sans"], False),
                                                   (None, True)])
def test_report_lists_classes_by_index_when_no_font_draws_them(families, names_drawn, tmp_path,
                                                               monkeypatch):
    if families is None:  # this machine's fonts
        if cjk_families() is None:
            pytest.skip("no installed font has CJK glyphs")
    else:
        monkeypatch.setattr(report, "font_families", lambda: families)
    run = make_run(tmp_path / "run", CJK_NAMES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = report.write_report(run).read_text("utf-8")
    assert not [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert (run / "report" / "confusion_matrix.png").stat().st_size > 1000
    assert ("<table class='classes'>" in page) is not names_drawn
    if not names_drawn:
        for i, name in enumerate(CJK_NAMES):
            assert f"<tr><td>{i}</td><td>{name}</td></tr>" in page


# --- where the time went ------------------------------------------------------------------------

T0 = 1_700_000_000.0  # the search's start (budget.json's session_started)
#: trial id -> (start, end, epochs, stopped, final/from_trial), seconds after T0.
TRIALS = {"0": (10, 70, 3, None, None), "1": (75, 135, 3, None, None),
          "2": (140, 160, 1, "below median", None), "3": (165, 285, 6, "deadline", "1")}


def make_timed_run(root, trials=TRIALS, *, timings=True, budget=True, epoch_times=True):
    """A run directory as a budgeted search leaves it, written by hand: 5 s reading the
    data, three search trials (one stopped below the median), the final training
    (trial 1's configuration again, stopped at the deadline), a 20 s export ending
    310 s after the start of a 300 s budget."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(json.dumps(
        {"options": {"space": "quick", "tuner": "random", "objective": "val_accuracy"},
         "class_names": ["a", "b"]}))
    for trial_id, (start, end, epochs, stopped, final) in trials.items():
        folder = root / "tuner" / f"trial_{trial_id}"
        folder.mkdir(parents=True)
        values = {"learning_rate": 0.01 * (int(trial_id) % 3 + 1), "tuner/trial_id": None}
        if final is not None:
            values = {**values, "learning_rate": 0.02, "final/epochs": epochs,
                      "final/from_trial": final}
        (folder / "trial.json").write_text(json.dumps(
            {"trial_id": trial_id, "status": "COMPLETED", "score": 0.5 + int(trial_id) / 10,
             "hyperparameters": {"values": values}}))
        record = {"trial_id": trial_id, "started": T0 + start, "ended": T0 + end,
                  "params": 1000, "history": {k: [0.5] * epochs for k in (
                      "loss", "accuracy", "val_loss", "val_accuracy")}}
        if epoch_times:
            step = (end - start) / epochs
            record["epoch_times"] = [T0 + start + step * (i + 1) for i in range(epochs)]
        if stopped:
            record["stopped"] = stopped
        (folder / "history.json").write_text(json.dumps(record))
    if budget:
        (root / "tuner" / "budget.json").write_text(json.dumps(
            {"seconds": 300.0, "spent": 286.0, "session_started": T0, "earlier": 0.0,
             "final_training": 0.5, "saved": T0 + 286}))
    if timings:
        path = root / "timings.json"
        path.write_text(json.dumps({"data": 5.0, "export": 20.0}))
        os.utime(path, (T0 + 310, T0 + 310))  # written as the export ended
    return root


def time_paragraph(page):
    return page.split("<p class='time'>")[1].split("</p>")[0]


def test_the_report_says_where_the_time_went(tmp_path):
    run = make_timed_run(tmp_path / "run")
    page = report.write_report(run).read_text("utf-8")
    assert "<h2>Where the time went</h2>" in page
    assert (run / "report" / "time.png").stat().st_size > 1000
    assert "<img src='time.png'" in page
    # 140 s of search trials (60 + 60 + 20), 120 s final, 310 s from the start to the export's
    # end: 10 s over the budget, 310 - 5 - 140 - 120 - 20 = 25 s between the parts.
    assert time_paragraph(page) == (
        "Data 5.0 s, search trials 2m20s (3 trials, 1 stopped early), final training 2m00s "
        "(stopped at the deadline), export 20 s: 5m10s in all, 10 s over the 5m00s budget; "
        "the other 25 s went between them (processes starting, the run and the tuner "
        "loading).")
    final_row = page.split("<tr class='completed final'>")[1].split("</tr>")[0]
    assert final_row.startswith("<td>3</td>") and "final training of trial 1" in final_row
    assert "stopped at the deadline" in final_row
    assert "<th>final/epochs</th>" not in page  # bookkeeping, not a searched value
    stopped_row = page.split("<td>2</td>")[1].split("</tr>")[0]
    assert "stopped below the median" in stopped_row


def test_the_time_line_bars_and_the_trials_listing(tmp_path):
    from resnet_tuner.run import trials as listing

    run = make_timed_run(tmp_path / "run")
    rows = listing.read_trials(run)
    line = report.time_line(run, rows)
    assert line["origin"] == T0 and line["budget_end"] == T0 + 300
    bars = [(b["kind"], b["label"], b["start"] - T0, b["end"] - T0, b["stopped"])
            for b in line["bars"]]
    assert bars == [("data", "data", 0, 5, None), ("search", "trial 0", 10, 70, None),
                    ("search", "trial 1", 75, 135, None),
                    ("search", "trial 2", 140, 160, "below median"),
                    ("final", "final (1)", 165, 285, "deadline"),
                    ("export", "export", 290, 310, None)]
    final = next(t for t in rows if t["trial_id"] == "3")
    assert (final["final"], final["final_from"], final["stopped"]) == (True, "1", "deadline")
    assert "final/epochs" not in final["hyperparameters"]
    table = "\n".join(listing.table_lines(rows, "val_accuracy"))
    assert "final training of trial 1; stopped at the deadline | " in table
    assert "stopped below the median" in table
    head = next(row for row in table.splitlines() if row.startswith("trial "))
    assert head.split()[:6] == ["trial", "status", "val_accuracy", "epochs", "time", "params"]
    csv_rows = list(csv.DictReader(io.StringIO(listing.csv_text(rows))))
    assert {r["trial_id"]: (r["final"], r["stopped"]) for r in csv_rows}["3"] == (
        "True", "deadline")


def test_a_run_without_a_budget_or_timings_still_reports(tmp_path):
    run = make_timed_run(tmp_path / "run", budget=False, timings=False, epoch_times=False)
    page = report.write_report(run).read_text("utf-8")
    assert (run / "report" / "time.png").is_file()
    # From the first trial's start to the final's end; no data, export or budget known.
    assert time_paragraph(page) == (
        "Search trials 2m20s (3 trials, 1 stopped early), final training 2m00s (stopped at "
        "the deadline): 4m35s in all; the other 15 s went between them (processes "
        "starting, the run and the tuner loading).")
    line = report.time_line(run, report.read_trials(run))
    assert line["origin"] == T0 + 10 and line["budget_end"] is None


def test_a_run_from_before_the_timings_reports_without_the_section(tmp_path):
    run = make_run(tmp_path / "run", ["a", "b"])  # no trial folders, no timings
    page = report.write_report(run).read_text("utf-8")
    assert "Where the time went" not in page and not (run / "report" / "time.png").exists()


def test_a_copied_run_s_export_is_drawn_after_the_search(tmp_path):
    run = make_timed_run(tmp_path / "run")
    os.utime(run / "timings.json")  # copied today: the time of change says nothing
    bars = report.time_line(run, report.read_trials(run))["bars"]
    assert (bars[-1]["kind"], bars[-1]["start"] - T0) == ("export", 286)  # budget.json's saved


def test_thirty_trials_stay_legible(tmp_path):
    trials = {str(i): (10 + 20 * i, 28 + 20 * i, 3, "deadline" if i == 28 else None, None)
              for i in range(29)}
    trials["29"] = (600, 640, 4, None, "3")
    run = make_timed_run(tmp_path / "run", trials)
    line = report.time_line(run, report.read_trials(run))
    fig = report.time_figure(line)
    assert draw(fig) == []
    ax = fig.axes[0]
    labels = ax.get_yticklabels()
    assert len(labels) == 32 and all(inside(fig, t) for t in labels)
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.y0)
    assert all(a.y1 <= b.y0 + 0.5  # no label overlaps the next
               for a, b in zip(boxes, boxes[1:], strict=False))
    assert all(inside(fig, t) for t in ax.texts)  # each bar's seconds
    assert inside(fig, fig.legends[0]) and inside(fig, ax.title)
    plt.close(fig)


def test_report_and_trials_load_no_tensorflow(tmp_path):
    run = make_timed_run(tmp_path / "run")
    code = ("import sys; from resnet_tuner.report import write_report; "
            f"write_report({str(run)!r}); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
