"""`resnet-tuner report`: one HTML page with PNG plots of a run.

Reads the trials with `resnet_tuner.run.trials` (the reader `resnet-tuner
trials` uses: keras-tuner's `trial.json` and our `history.json` per trial),
the run directory's disk use, and the best bundle's `metrics.json` and
`classes.json`: nothing is retrained or reloaded.

"Where the time went" is `timeline`'s (`time_line`, `time_sentence`,
`time_figure`): the data reading, each trial, the final training and the
export on one time axis.

Class names come from folder names, so they can be in any script. The
confusion matrix draws them with the default font plus, as matplotlib's
per-glyph fallback, installed fonts that have the glyphs it lacks (checked
against each font's character map). When no installed font has them all, the
axes show class indices and the page, which the browser renders in any
script, lists index -> name: never empty boxes, never a warning per glyph.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from resnet_tuner.run.rundir import RUN_FILE
from resnet_tuner.run.trials import (
    disk_usage,
    notes_text,
    objective_of,
    read_trials,
    size_text,
    value_text,
)
from resnet_tuner.timeline import TIME_COLOURS, time_figure, time_line, time_sentence

#: Fonts whose character map covers everything with placeholder boxes
#: (matplotlib ships "Last Resort High-Efficiency"): drawing with them is tofu.
PLACEHOLDER_FONTS = ("Last Resort",)


# ------------------------------------------------------------------------ fonts
def font_families() -> list[str]:
    """The font families matplotlib can draw with, its default first.

    Fonts installed after matplotlib built its font cache (e.g. `apt-get
    install fonts-noto-cjk` after a first report) are not in that cache;
    they are registered here, so installing a font is enough.
    """
    from matplotlib import font_manager

    manager = font_manager.fontManager
    known = {entry.fname for entry in manager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known:
            try:
                manager.addfont(path)
            except Exception:  # an unreadable font file is simply not a candidate
                pass
    default = font_manager.findfont(font_manager.FontProperties())
    first = next((e.name for e in manager.ttflist if e.fname == default), None)
    # Only families with an upright face of regular or medium weight (400-500:
    # WenQuanYi Zen Hei, Debian's small CJK font, has only 500): for the others
    # matplotlib substitutes another weight and logs a "findfont: Failed to find" line.
    regular = {e.name for e in manager.ttflist
               if e.style == "normal"
               and 400 <= font_manager.weight_dict.get(e.weight, e.weight) <= 500}
    others = sorted(regular - {first})
    return [first, *others] if first else others


@functools.cache
def _characters(family: str) -> frozenset[int]:
    """Code points the font matplotlib picks for `family` (normal style) has a glyph for."""
    from matplotlib import font_manager

    with quiet_font_weights():
        path = font_manager.findfont(font_manager.FontProperties(family=[family]),
                                     fallback_to_default=False)
    charmap = font_manager.get_font(path).get_charmap()
    return frozenset(code for code, glyph in charmap.items() if glyph)


def label_fonts(names: Sequence[str], families: Sequence[str] | None = None) -> list[str] | None:
    """The font families that draw every character of `names`, or None if none do.

    The first usable family of `families` leads; each later one is added
    only for characters the ones before it lack, so matplotlib's font
    fallback (a list of families) takes each glyph from a font that has it.

    Args:
        names: the texts to draw (class names).
        families: candidate families in order of preference (default:
            `font_families()`, matplotlib's default font first).

    Returns:
        A family list for `fontfamily=`, or None when the candidates
        together lack a character.
    """
    families = font_families() if families is None else list(families)
    missing = {ord(ch) for name in names for ch in name}
    chosen: list[str] = []
    for family in families:
        if any(mark in family for mark in PLACEHOLDER_FONTS):
            continue
        try:
            covered = _characters(family)
        except (ValueError, RuntimeError, OSError):  # not installed, or unreadable
            continue
        if not chosen or missing & covered:
            chosen.append(family)
            missing -= covered
        if not missing:
            return chosen
    return None


def confusion_matrix_figure(matrix, class_names: Sequence[str], title: str,
                            families: Sequence[str] | None = None):
    """The confusion matrix as a figure: `(figure, legend)`.

    Axes are labelled with the class names when fonts that draw them exist
    (see `label_fonts`), else with class indices; `legend` is then
    `[(index, name), ...]` for the page, and None when the names are on the axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(matrix)
    names = [str(n) for n in class_names]
    fonts = label_fonts(names, families)
    legend = None
    if fonts is None:
        names, legend = [str(i) for i in range(len(matrix))], list(enumerate(names))
    # Room for the cells, plus the longest label (about 0.08 inch a character at
    # 10 pt): constrained layout places everything but cannot make the figure larger.
    size = max(4.0, 0.45 * len(matrix) + 2) + 0.08 * max(map(len, names), default=0)
    fig, ax = plt.subplots(figsize=(size, size), layout="constrained")
    ax.imshow(matrix, cmap="Blues")
    # parse_math=False: a class named "$5 bill" is text, not mathtext.
    text = {"fontfamily": fonts, "parse_math": False} if fonts else {"parse_math": False}
    ax.set_xticks(range(len(matrix)), names, rotation=90 if fonts else 0, **text)
    ax.set_yticks(range(len(matrix)), names, **text)
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center",
                    color="white" if n > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted" if fonts else "predicted (class index: names listed on the page)")
    ax.set_ylabel("true" if fonts else "true (class index)")
    ax.set_title(title)
    return fig, legend


class _NoWeightSubstitution:
    """Drops matplotlib's "Failed to find font weight 400 for F, now using 500" line:
    `font_families` admits medium-weight faces on purpose (a CJK font may have no other)."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("findfont: Failed to find font weight")


@contextlib.contextmanager
def quiet_font_weights():
    """While drawing: no log line for a label font drawn at its only (medium) weight."""
    import logging

    logger, quiet = logging.getLogger("matplotlib.font_manager"), _NoWeightSubstitution()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# ------------------------------------------------------------------------ report
def write_report(run_dir: str | os.PathLike, to: str | os.PathLike | None = None) -> Path:
    """Writes `index.html` and its PNG plots; returns the HTML path.

    Raises:
        FileNotFoundError: `run_dir` is not a run directory.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"Not a resnet-tuner run directory (no {RUN_FILE}): {run_dir}")
    out = Path(to) if to else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    record = json.loads((run_dir / RUN_FILE).read_text("utf-8"))
    trials = read_trials(run_dir)  # best first
    objective, direction = objective_of(run_dir)
    scored = [t for t in trials if t["status"] == "COMPLETED" and t["score"] is not None]
    figures: list[tuple[str, str]] = []
    line = time_line(run_dir, trials)

    def save(fig, name: str, caption: str, into: list | None = None) -> None:
        with quiet_font_weights():  # figures use constrained layout: nothing cut off
            fig.savefig(out / name, dpi=110)
        plt.close(fig)
        (figures if into is None else into).append((name, caption))

    if scored:
        timed = sorted((t for t in scored if t["ended"]), key=lambda t: t["ended"])
        order = timed if len(timed) == len(scored) else scored
        # The time line's origin (the search's start) when there is one: both figures
        # then share their minutes. Else the first trial's start, as before.
        start = line["origin"] if line else min((t["started"] for t in timed), default=None)
        xs = [(t["ended"] - start) / 60 for t in order] if order is timed else list(
            range(1, len(order) + 1))
        best, running = [], None
        for t in order:
            pick = max if direction == "max" else min
            running = t["score"] if running is None else pick(running, t["score"])
            best.append(running)
        fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
        final = [i for i, t in enumerate(order) if t.get("final")]
        search = [i for i in range(len(order)) if i not in final]
        ax.plot([xs[i] for i in search], [order[i]["score"] for i in search], "o",
                label="trial", alpha=0.7)
        if final:
            ax.plot([xs[i] for i in final], [order[i]["score"] for i in final], "*", ms=12,
                    color=TIME_COLOURS["final"], label="final training")
        ax.step(xs, best, where="post", label="best so far", color="C3")
        ax.set_xlabel(("minutes since the search began" if line else
                       "minutes since the first trial") if order is timed else "trial")
        if order is timed and line:
            ax.set_xlim(left=min(0.0, *xs))  # from the search's start, as the time line
        ax.set_ylabel(objective)
        ax.set_title("Objective per trial")
        ax.legend()
        save(fig, "objective.png", f"{objective} of each trial and the best so far.")

        sized = [t for t in scored if t["params"]]
        if sized:
            fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
            ax.scatter([t["params"] for t in sized], [t["score"] for t in sized], alpha=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("parameters")
            ax.set_ylabel(objective)
            ax.set_title("Accuracy against model size")
            save(fig, "accuracy_vs_params.png", "Is a bigger model worth it?")

        top = scored[0]
        history = top["history"]
        if history:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
            for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
                for prefix, label in (("", "train"), ("val_", "validation")):
                    if prefix + key in history:
                        ax.plot(range(1, len(history[prefix + key]) + 1), history[prefix + key],
                                marker="o", label=label)
                ax.set_xlabel("epoch")
                ax.set_title(key)
                ax.legend()
            save(fig, "best_curves.png",
                 f"Training curves of the best trial ({top['trial_id']}).")

    best_dir = run_dir / "best"
    metrics_path = best_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text("utf-8")) if metrics_path.is_file() else None
    legend = None
    if metrics:
        held_out = metrics.get("split", "test") == "test"  # else no test split: validation's
        matrix = metrics["confusion_matrix"]
        classes_path = best_dir / "classes.json"  # the classes of the model the matrix is of
        classes = (json.loads(classes_path.read_text("utf-8")) if classes_path.is_file()
                   else record.get("class_names", []))
        if len(classes) != len(matrix):
            classes = [str(i) for i in range(len(matrix))]
        fig, legend = confusion_matrix_figure(
            matrix, classes,
            f"{'Test' if held_out else 'Validation'} confusion matrix\n"
            f"accuracy {100 * metrics['accuracy']:.1f} % on {metrics['images']} images")
        save(fig, "confusion_matrix.png", "Held-out test split, best exported model."
             if held_out else f"Validation split, best exported model: {metrics.get('note')}.")

    time_section = None
    if line:
        time_figures: list[tuple[str, str]] = []
        if line["bars"]:
            save(time_figure(line), "time.png",
                 "Each part of the run from its start to its end; hatched: stopped early.",
                 into=time_figures)
        time_section = (time_sentence(line), time_figures)
    page = _html(record, trials, figures, metrics, legend, objective=objective,
                 usage=disk_usage(run_dir), time_section=time_section)
    path = out / "index.html"
    path.write_text(page, "utf-8")
    return path


def _figures_html(figures) -> str:
    esc = html.escape
    return "".join(
        f"<figure><img src='{esc(name)}' alt='{esc(caption)}'><figcaption>{esc(caption)}"
        "</figcaption></figure>" for name, caption in figures
    )


def _html(record, trials, figures, metrics, legend=None, *, objective="val_accuracy",
          usage=None, time_section=None) -> str:
    esc = html.escape
    names = sorted({k for t in trials for k in t["hyperparameters"]})
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    rows = []
    for t in trials:  # best first
        cells = "".join(f"<td>{esc(value_text(t['hyperparameters'].get(n, '')))}</td>"
                        for n in names)
        score = f"{t['score']:.4f}" if t["score"] is not None else ""
        notes = [n for n in ((t["reason"] if t["status"] != "COMPLETED" else ""),
                             notes_text(t)) if n]
        reason = "".join(f"<br><small>{esc(n)}</small>" for n in notes)
        params = f"{t['params']:,}" if t["params"] else ""
        kind = esc(str(t["status"]).lower()) + " final" * bool(t.get("final"))
        rows.append(f"<tr class='{kind}'><td>{esc(t['trial_id'])}</td>"
                    f"<td>{esc(str(t['status']))}{reason}</td><td>{score}</td>"
                    f"<td>{params}</td>{cells}</tr>")
    images = _figures_html(figures)
    timing = ""
    if time_section:
        sentence, time_figures = time_section
        timing = (f"<h2>Where the time went</h2><p class='time'>{esc(sentence)}</p>"
                  f"{_figures_html(time_figures)}")
    classes = ""
    if legend:
        items = "".join(f"<tr><td>{i}</td><td>{esc(name)}</td></tr>" for i, name in legend)
        classes = ("<h2>Classes</h2><p>No installed font draws every class name, so the "
                   "confusion matrix labels classes by index:</p>"
                   f"<table class='classes'><tr><th>index</th><th>class</th></tr>{items}</table>")
    options = record.get("options", {})
    failed = sum(t["status"] == "FAILED" for t in trials)
    space = esc(str(options.get("space")))
    summary = (f"{len(trials)} trials ({failed} failed) of the <code>{space}</code> space "
               f"with {esc(str(options.get('tuner')))} on "
               f"<code>{esc(str(options.get('data_dir')))}</code>")
    test = (f"<p>Best model: test accuracy <b>{100 * metrics['accuracy']:.2f} %</b> on "
            f"{metrics['images']} held-out images.</p>") if metrics else ""
    disk = ""
    if usage:
        cache = ("; the decoded-image cache in it takes " + size_text(usage["cache"])
                 if usage["cache"] is not None else
                 f"; the decoded-image cache is outside it ({esc(usage['cache_dir'])})")
        disk = (f"<p>Disk: the run directory takes {size_text(usage['total'])}, of which "
                f"{usage['checkpoint_files']} trial checkpoint"
                f"{'s' * (usage['checkpoint_files'] != 1)} {size_text(usage['checkpoints'])}; "
                f"{usage['pruned']} checkpoint{'s' * (usage['pruned'] != 1)} pruned "
                f"({size_text(usage['pruned_bytes'])} freed, <code>--keep-checkpoints</code>)"
                f"{cache}.</p>")
    if metrics and metrics.get("split", "test") != "test":  # no test split
        test = (f"<p>Best model: validation accuracy <b>{100 * metrics['accuracy']:.2f} %</b> "
                f"on {metrics['images']} images. <b>{esc(str(metrics.get('note')))}</b>.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>resnet-tuner report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
figure{{display:inline-block;margin:0 1em 1em 0}} img{{max-width:560px}}
table{{border-collapse:collapse;font-size:90%}} td,th{{border:1px solid #ccc;padding:3px 6px}}
tr.failed,tr.invalid{{background:#fdd}}</style></head><body>
<h1>resnet-tuner report</h1><p>{summary}</p>{test}{disk}
{images}
{timing}
{classes}
<h2>Trials</h2><table><tr><th>trial</th><th>status</th><th>{esc(objective)}</th><th>parameters</th>
{head}</tr>{''.join(rows)}</table></body></html>
"""
