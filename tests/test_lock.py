"""Two searches on one run directory: the second is refused at once, naming the first.

The lock is the operating system's (`flock`), so a killed search frees the
directory immediately; the per-trial processes of a search run under its lock
(test_cli's searches would fail otherwise).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from resnet_tuner import cli
from resnet_tuner.run.rundir import LOCK_FILE, RunInUseError, search_lock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")


def hold_lock(run_dir):
    """A separate process that takes the lock and sleeps until killed."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from resnet_tuner.run.rundir import search_lock
        with search_lock(Path({str(run_dir)!r})):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_naming_the_first_and_a_kill_frees_it(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunInUseError, match=rf"in use by another search \(pid {holder.pid} "):
            with search_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with search_lock(tmp_path):  # no stale lock after kill -9
        assert (tmp_path / LOCK_FILE).is_file()


def test_lock_is_released_and_reentrant_for_the_holders_children(tmp_path):
    with search_lock(tmp_path):
        # A trial process started by the holder inherits the environment marker.
        code = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                from pathlib import Path
                from resnet_tuner.run.rundir import search_lock
                with search_lock(Path({str(tmp_path)!r})):
                    pass
            """)], env=os.environ.copy()).returncode
        assert code == 0
    with search_lock(tmp_path):  # released on exit
        pass


def test_cli_refuses_a_second_search_at_once(tmp_path, capsys):
    holder = hold_lock(tmp_path / "run")
    try:
        started = time.monotonic()
        code = cli.main(["search", "digits", "--out", str(tmp_path / "run"), "--max-trials", "1",
                         "--image-size", "8"])
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2
    assert f"pid {holder.pid}" in err and "in use by another search" in err
    assert took < 30  # refused before any data is loaded or trial trained
