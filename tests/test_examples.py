"""Every example runs as a user runs it, start to finish (slow: `pytest -m slow`).

Each runs in its own process, so a crash (the in-process oneDNN crash of
seed004_voc_resnet.py was one) fails its test instead of the suite.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(args, cwd, timeout=1500):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, (
        f"{args} exited with {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def bundle_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_seed004_voc_resnet_twice_in_a_row(tmp_path):
    """Two trials in one process (the crash), then the same command resumes."""
    script = str(EXAMPLES / "seed004_voc_resnet.py")
    out = run([sys.executable, script, "--out", str(tmp_path / "s4")], tmp_path)
    assert "test top-1" in out
    first = bundle_metrics(tmp_path / "s4" / "best")
    assert first["accuracy"] > 0.5  # 10 classes: chance is 0.1
    again = run([sys.executable, script, "--out", str(tmp_path / "s4")], tmp_path)
    assert "test top-1" in again


def test_seed003_cats_vs_dogs(tmp_path):
    out = run([sys.executable, str(EXAMPLES / "seed003_cats_vs_dogs.py"),
               "--out", str(tmp_path / "s3")], tmp_path)
    assert "bound method" not in out
    bundle = Path(out.split("best exported to ")[1].split("\n")[0].strip())
    assert (bundle / "model.keras").is_file()
    assert 0.0 <= bundle_metrics(bundle)["accuracy"] <= 1.0


def test_bayesian_export(tmp_path):
    out = run([sys.executable, str(EXAMPLES / "bayesian_export.py")], tmp_path)
    bundle = Path(out.split("best model in ")[1].split("\n")[0].strip())
    assert bundle_metrics(bundle)["accuracy"] > 0.9  # digits, 10 classes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("resnet-tuner") is None, reason="console script not installed")
def test_distributed_one_machine_script(tmp_path):
    run(["bash", str(EXAMPLES / "distributed" / "one_machine.sh"), "digits",
         str(tmp_path / "run"), str(_free_port())], tmp_path)
    assert (tmp_path / "run" / "best" / "model.keras").is_file()
    assert "trial 6 of 6" in (tmp_path / "run" / "chief.log").read_text()
