"""Resident memory across trials: does a long search keep growing?

Runs `resnet-tuner search digits --space quick --tuner random` for 20 trials
twice, one after the other, and samples the resident set size (RSS) of the
process that trains, from outside, every 0.2 s:

* `--trials-per-process 1` (the default of `resnet-tuner search`): each trial
  in a fresh process that resumes the run;
* `--trials-per-process 0` (the baseline): every trial in one process, with
  keras-tuner's `clear_session()` + `gc.collect()` between trials.

For each it prints the peak RSS during each trial and the growth from trial 2
(TensorFlow loaded, first graphs traced) to the last trial, and the ratio of
the two growths. Target: growth under 150 MB with the default.

Usage:
    python bench/trial_memory.py                  # 20 trials x 2 epochs, both modes
    python bench/trial_memory.py --trials 6 --modes 1

Writes bench/results/trial_memory.json (not committed). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS in kB) of every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as f:
                rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, rss)
    return table


def trainer_rss_mb(root: int) -> float:
    """The largest RSS among `root` and its descendants: the process training."""
    table = _processes()
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return max((table[p][1] for p in tree if p in table), default=0) / 1024


def measure(trials: int, epochs: int, per_process: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rt_mem_") as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "resnet_tuner.cli", "search", "digits", "--out", str(out),
                   "--space", "quick", "--tuner", "random", "--max-trials", str(trials),
                   "--epochs", str(epochs), "--image-size", "32",
                   "--trials-per-process", str(per_process)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        peaks: list[float] = []
        current = 0.0
        while proc.poll() is None:
            done = len(list(out.glob("tuner/trial_*/history.json")))
            if done > len(peaks):  # trial(s) ended since the last sample
                peaks.extend([current] * (done - len(peaks)))
                print(f"  trial {len(peaks):2d}: peak RSS {current:.0f} MB", flush=True)
                current = 0.0
            if done < trials:
                current = max(current, trainer_rss_mb(proc.pid))
            time.sleep(0.2)
        stderr = proc.stderr.read()
        if proc.returncode != 0:
            raise SystemExit(f"search failed ({proc.returncode}):\n{stderr[-3000:]}")
        seconds = time.perf_counter() - started
    base, last = peaks[1], peaks[-1]
    return {"trials_per_process": per_process, "peak_rss_mb": [round(p, 1) for p in peaks],
            "rss_trial_2_mb": round(base, 1), "rss_last_trial_mb": round(last, 1),
            "growth_mb": round(last - base, 1), "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--modes", default="1,0",
                        help="--trials-per-process values to run (default: 1,0)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.trials < 3:
        parser.error("--trials must be at least 3 (trial 2 is the baseline)")
    runs = {}
    for mode in [int(m) for m in args.modes.split(",")]:
        print(f"== --trials-per-process {mode}: {args.trials} trials x {args.epochs} epochs",
              flush=True)
        runs[mode] = measure(args.trials, args.epochs, mode)
        r = runs[mode]
        print(f"   RSS trial 2 {r['rss_trial_2_mb']:.0f} MB -> trial {args.trials} "
              f"{r['rss_last_trial_mb']:.0f} MB: growth {r['growth_mb']:+.0f} MB "
              f"({r['seconds'] / 60:.1f} min)", flush=True)
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/trial_memory.py", *(argv or sys.argv[1:])]),
        "trials": args.trials, "epochs": args.epochs, "target_growth_mb": 150,
        "runs": {str(k): v for k, v in runs.items()},
    }
    print()
    if 1 in runs:
        growth = runs[1]["growth_mb"]
        print(f"default (--trials-per-process 1): growth {growth:+.0f} MB from trial 2 to "
              f"{args.trials}; target < 150 MB: {'met' if growth < 150 else 'MISSED'}")
    if 1 in runs and 0 in runs:
        ratio = runs[1]["growth_mb"] / runs[0]["growth_mb"] if runs[0]["growth_mb"] else None
        report["growth_ratio_default_to_in_process"] = ratio
        print(f"baseline (--trials-per-process 0): growth {runs[0]['growth_mb']:+.0f} MB; "
              f"ratio default/baseline {ratio:.2f}; time {runs[1]['seconds'] / 60:.1f} vs "
              f"{runs[0]['seconds'] / 60:.1f} min" if ratio is not None else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trial_memory.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
