"""The README's Python quick start, run as written, against the CLI on the same folder (slow).

The code block is read from README.md, so the README cannot drift from what
is tested: only the folder, the image size, the run folder and the budget
(4 trials of up to 4 epochs, on both paths) are replaced.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from _sample_data import digit_folders  # noqa: E402

pytestmark = pytest.mark.slow


def quick_start_code() -> str:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("## Python quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_quick_start_block_is_the_one_tested():
    code = quick_start_code()
    assert "from resnet_tuner import Hyperband" in code
    for written in ('"pets/"', "(64, 64)", '"runs"', '"runs/pets/best"',
                    "max_epochs=10, max_trials=10"):
        assert written in code


def test_quick_start_matches_the_cli_on_digits(tmp_path):
    folder = digit_folders(tmp_path / "digits")
    code = (quick_start_code()
            .replace('"pets/"', repr(str(folder)))
            .replace("(64, 64)", "(32, 32)")
            .replace("max_epochs=10, max_trials=10", "max_epochs=4, max_trials=4")
            .replace('"runs/pets/best"', repr(str(tmp_path / "py" / "best")))
            .replace('"runs"', repr(str(tmp_path / "py"))))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    python_acc = json.loads((tmp_path / "py" / "best" / "metrics.json").read_text())["accuracy"]

    proc = subprocess.run(
        [sys.executable, "-m", "resnet_tuner.cli", "search", str(folder), "--out",
         str(tmp_path / "cli"), "--image-size", "32", "--max-trials", "4", "--epochs", "4"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_acc = json.loads((tmp_path / "cli" / "best" / "metrics.json").read_text())["accuracy"]
    print(f"README quick start test accuracy {python_acc:.4f}, CLI {cli_acc:.4f}")
    # Both reach what this search reaches on digits at 32 px ...
    assert python_acc >= 0.95 and cli_acc >= 0.95
    # ... and the Python path is not behind the CLI by more than run-to-run noise:
    # the test split is 180 images and CPU training is not bit-for-bit repeatable
    # between processes; measured on 2 cores, each path lands anywhere in
    # 97.8-100 % (176-180 images) from run to run, so 0.01 (under 2 images) failed
    # CI once (97.78 vs 98.89). 0.03 is about 5 images.
    assert python_acc >= cli_acc - 0.03
