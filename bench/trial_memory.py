"""Resident memory across trials: does a long search leak?

Runs 20 trials of the `quick` space on scikit-learn's bundled digits (32x32x3)
with RandomSearch in this process (the way `resnet-tuner search` runs them),
prints the resident set size (RSS) after each trial, and the growth from the
end of trial 2 (the baseline: TensorFlow and the data are loaded, the first
graphs traced) to the end of the last trial. Target: under 150 MB.

Usage:
    python bench/trial_memory.py                 # 20 trials x 2 epochs
    python bench/trial_memory.py --trials 5 --epochs 1

Writes bench/results/trial_memory.json (not committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.trials < 3:
        parser.error("--trials must be at least 3 (trial 2 is the baseline)")

    from resnet_tuner.search import SearchOptions, run_search

    samples: list[dict] = []

    class Sampling:
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            samples.append({"trial": len(samples) + 1, "rss_mb": round(rss_mb(), 1),
                            "status": trial.status, "score": trial.score})
            print(f"after trial {len(samples):2d}: RSS {samples[-1]['rss_mb']:.0f} MB "
                  f"(val_accuracy {trial.score})", flush=True)

    import resnet_tuner.search as search

    original = search.make_tuner

    def make_tuner(*a, **k):  # the same tuner, with a sampling hook first in line
        tuner = original(*a, **k)
        tuner.__class__ = type("Sampled" + type(tuner).__name__, (Sampling, type(tuner)), {})
        return tuner

    search.make_tuner = make_tuner
    start_rss = rss_mb()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rt_mem_") as tmp:
        options = SearchOptions(data_dir="digits", out=tmp, space="quick", tuner="random",
                                max_trials=args.trials, epochs=args.epochs, image_size=32)
        run_search(options, verbose=0)
    seconds = time.perf_counter() - started
    base, last = samples[1]["rss_mb"], samples[-1]["rss_mb"]
    growth = last - base
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/trial_memory.py", *(argv or sys.argv[1:])]),
        "trials": len(samples),
        "epochs": args.epochs,
        "rss_before_search_mb": round(start_rss, 1),
        "rss_after_trial_2_mb": base,
        "rss_after_last_trial_mb": last,
        "growth_mb": round(growth, 1),
        "growth_ratio": round(last / base, 3),
        "target_mb": 150,
        "seconds": round(seconds, 1),
        "samples": samples,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trial_memory.json").write_text(json.dumps(report, indent=1))
    print(f"\nRSS after trial 2: {base:.0f} MB; after trial {len(samples)}: {last:.0f} MB; "
          f"growth {growth:+.0f} MB (ratio {last / base:.3f}; target < 150 MB: "
          f"{'met' if growth < 150 else 'MISSED'}); {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
