"""Where a run's time went: the data reading, each trial, the final training, the export.

`time_line` puts on one time axis the data reading and the export
(`timings.json`: seconds, of the last session), each trial from its start to
its end (`history.json`) and, with a time budget, its end
(`tuner/budget.json`); `time_sentence` says it in one sentence and
`time_figure` draws it, for `resnet-tuner report`. Each part is drawn when its
file is there: a run from before these files still gets a report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from resnet_tuner.run.rundir import PROJECT, TIMINGS_FILE
from resnet_tuner.run.trials import BUDGET_FILE, STOPPED_TEXT

__all__ = ["TIME_COLOURS", "time_figure", "time_line", "time_sentence"]

#: The time line's colours: reading the data, a search trial, the final training, the export.
TIME_COLOURS = {"data": "0.55", "search": "C0", "final": "C2", "export": "C4"}
#: How a trial stopped early is drawn (hatching), by `history.json`'s `stopped`.
STOPPED_HATCH = {"deadline": "////", "below median": "...."}
#: The export's end is read from `timings.json`'s time of change when it lies this
#: many seconds at most after the search's end (else the run directory was copied
#: or resumed since, and the export is drawn right after the search).
EXPORT_GAP = 600.0


def _read_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def time_line(run_dir: str | os.PathLike, trials: Sequence[dict]) -> dict | None:
    """Where a run's time went, as bars on one time axis (UNIX times), or None when
    nothing of it was recorded.

    Returns:
        `{"origin", "bars", "budget_end", "budget", "seconds"}`: `origin` is when
        the search began (the budget's `session_started`, else the first trial's
        start less the data's seconds); each bar is `{"kind": "data" | "search" |
        "final" | "export", "label", "start", "end", "stopped", "epoch_times"}`,
        in order of start; `budget` is `budget.json` (None: no budget) and
        `budget_end` when it ends; `seconds` are the sentence's numbers
        (`time_sentence`): `data`, `trials`, `search_trials`, `stopped`, `final`,
        `final_trials`, `export`, `total`, `budget`, `between` (None when unknown).
    """
    run_dir = Path(run_dir)
    timings_path = run_dir / TIMINGS_FILE
    timings = _read_object(timings_path)
    data, export = _number(timings.get("data")), _number(timings.get("export"))
    budget = _read_object(run_dir / PROJECT / BUDGET_FILE) or None
    session = _number((budget or {}).get("session_started"))
    bars = []
    for t in trials:
        start, end = _number(t.get("started")), _number(t.get("ended"))
        if end is None and start is not None and _number(t.get("seconds")) is not None:
            end = start + t["seconds"]  # running, or failed mid-way: to its last epoch
        if start is None or end is None:
            continue  # failed before it trained, or an unreadable record
        final = bool(t.get("final"))
        label = (f"final ({t['final_from']})" if final and t.get("final_from")
                 else "final" if final else f"trial {t['trial_id']}")
        bars.append({"kind": "final" if final else "search", "label": label, "start": start,
                     "end": end, "stopped": t.get("stopped"),
                     "epoch_times": list(t.get("epoch_times") or [])})
    bars.sort(key=lambda b: b["start"])
    if not bars and session is None:
        return None
    if session is not None:
        origin = min([session, *(b["start"] for b in bars)])
        data_start = session
    else:
        origin = data_start = bars[0]["start"] - (data or 0.0)
    if data is not None:
        bars.insert(0, {"kind": "data", "label": "data", "start": data_start,
                        "end": data_start + data, "stopped": None, "epoch_times": []})
    search_end = max([b["end"] for b in bars] + [session or origin])
    if session is not None and _number(budget.get("saved")):  # saved when the search ended
        search_end = max(search_end, budget["saved"])
    if export is not None:
        try:
            export_start = timings_path.stat().st_mtime - export  # written as the export ended
        except OSError:
            export_start = search_end
        if not search_end - 2.0 <= export_start <= search_end + EXPORT_GAP:
            export_start = search_end
        bars.append({"kind": "export", "label": "export", "start": export_start,
                     "end": export_start + export, "stopped": None, "epoch_times": []})
    end = max(b["end"] for b in bars) if bars else search_end
    budget_seconds = _number((budget or {}).get("seconds"))
    earlier = _number((budget or {}).get("earlier")) or 0.0
    budget_end = (session + budget_seconds - earlier
                  if session is not None and budget_seconds is not None else None)
    total = (earlier + end - session) if session is not None else end - origin
    search = [b for b in bars if b["kind"] == "search"]
    finals = [b for b in bars if b["kind"] == "final"]
    trial_seconds = sum(b["end"] - b["start"] for b in search)
    final_seconds = sum(b["end"] - b["start"] for b in finals) if finals else None
    counted = (data or 0.0) + trial_seconds + (final_seconds or 0.0) + (export or 0.0)
    seconds = {
        "data": data, "trials": trial_seconds, "search_trials": len(search),
        "stopped": sum(bool(b["stopped"]) for b in search), "final": final_seconds,
        "final_trials": finals, "export": export, "total": total, "budget": budget_seconds,
        # Between the parts: processes starting, the tuner loading, checkpoints pruned.
        # Trials that overlap (a distributed search) leave no such number.
        "between": total - counted if total >= counted else None,
    }
    return {"origin": origin, "bars": bars, "budget_end": budget_end, "budget": budget,
            "seconds": seconds}


def _seconds_text(seconds: float) -> str:
    """`0.2 s`, `38 s`, `1m34s` (as `--time-budget` is written)."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    seconds = int(round(seconds))
    minutes, rest = divmod(seconds, 60)
    return f"{minutes // 60}h{minutes % 60:02d}m{rest:02d}s" if minutes >= 60 else \
        f"{minutes}m{rest:02d}s"


def time_sentence(line: dict) -> str:
    """`Data 0.2 s, search trials 38 s (1 trial, none stopped early), ...`: the time
    line in one sentence (plain text), each part said only when it was recorded."""
    n = line["seconds"]
    parts = []
    if n["data"] is not None:
        parts.append(f"data {_seconds_text(n['data'])}")
    k, m = n["search_trials"], n["stopped"]
    if k:
        early = "none" if m == 0 else "it" if k == 1 else "all" if m == k else str(m)
        parts.append(f"search trials {_seconds_text(n['trials'])} ({k} trial{'s' * (k != 1)}"
                     f", {early} stopped early)")
    if n["final"] is not None:
        final = n["final_trials"][0]
        stop = STOPPED_TEXT.get(final["stopped"], "") if final["stopped"] else ""
        parts.append(f"final training {_seconds_text(n['final'])}" + (f" ({stop})" if stop
                                                                       else ""))
    elif line["budget"] and float(line["budget"].get("final_training") or 0) > 0:
        parts.append("no final training")
    if n["export"] is not None:
        parts.append(f"export {_seconds_text(n['export'])}")
    text = ", ".join(parts)
    text = text[:1].upper() + text[1:] if text else "Nothing timed"
    total = f"{_seconds_text(n['total'])} in all"
    if n["budget"] is not None:
        over = n["total"] - n["budget"]
        total += (f", {_seconds_text(over)} over the {_seconds_text(n['budget'])} budget"
                  if over >= 0.5 else f" of the {_seconds_text(n['budget'])} budget")
    between = ""
    if n["between"] is not None and n["between"] >= 0.5:
        between = (f"; the other {_seconds_text(n['between'])} went between them "
                   "(processes starting, the run and the tuner loading)")
    return f"{text}: {total}{between}."


def time_figure(line: dict):
    """The time line as a figure: a bar per part, minutes since the search began."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    bars, origin = line["bars"], line["origin"]
    rows = len(bars)
    small = rows > 16
    fig, ax = plt.subplots(figsize=(7.5, max(2.4, 0.22 * rows + 1.6)), layout="constrained")
    right = max([b["end"] for b in bars] + [line["budget_end"] or origin])
    span = (right - min(b["start"] for b in bars)) / 60
    for y, bar in enumerate(bars):
        left, width = (bar["start"] - origin) / 60, (bar["end"] - bar["start"]) / 60
        ax.barh(y, width, left=left, height=0.7, color=TIME_COLOURS[bar["kind"]],
                hatch=STOPPED_HATCH.get(bar["stopped"]), edgecolor="white", linewidth=0)
        for at in bar["epoch_times"][:-1]:  # epoch ends inside the bar
            ax.plot([(at - origin) / 60] * 2, [y - 0.35, y + 0.35], color="white",
                    lw=0.6 if small else 0.8)
        # Its seconds: inside a long bar (clear of the budget's line), else after it.
        inside = width > 0.2 * span
        ax.text(left + width, y, f"{_seconds_text(bar['end'] - bar['start'])} " if inside
                else f" {_seconds_text(bar['end'] - bar['start'])}",
                va="center", ha="right" if inside else "left", fontsize=7 if small else 8,
                color="white" if inside else "0.25",
                bbox={"facecolor": TIME_COLOURS[bar["kind"]], "edgecolor": "none",
                      "pad": 0.5} if inside else None)
    ax.set_yticks(range(rows), [b["label"] for b in bars], fontsize=7 if small else 9)
    ax.set_ylim(rows - 0.4, -0.6)  # first at the top, as time goes
    # Room on the right for the last bar's seconds.
    ax.set_xlim(min(0.0, min(b["start"] - origin for b in bars) / 60),
                (right - origin) / 60 * 1.12 + 0.05)
    ax.set_xlabel("minutes since the search began")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    kinds = {b["kind"] for b in bars}
    handles = [Patch(color=TIME_COLOURS[k], label=label) for k, label in (
        ("data", "reading the data"), ("search", "search trial"),
        ("final", "final training"), ("export", "export")) if k in kinds]
    for stopped, hatch in STOPPED_HATCH.items():
        if any(b["stopped"] == stopped for b in bars):
            handles.append(Patch(facecolor=TIME_COLOURS["search"], hatch=hatch,
                                 edgecolor="white", label=STOPPED_TEXT[stopped]))
    if line["budget_end"] is not None:
        ax.axvline((line["budget_end"] - origin) / 60, color="C3", ls="--", lw=1.2)
        handles.append(plt.Line2D([], [], color="C3", ls="--", label=(
            f"end of the {_seconds_text(line['seconds']['budget'])} budget")))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3),
               fontsize=8, frameon=False)
    ax.set_title("Where the time went")
    return fig
