"""Goal: stopping a daemon is graceful exactly once: ``NodeProcess.stop`` sends one SIGTERM
(however often it is called), SIGKILLs only after its deadline, and a daemon that gets
more SIGTERMs during its graceful stop still exits cleanly (code 0, "stopped" logged)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from machi.node.process import NodeProcess

pytestmark = pytest.mark.timeout(60)
#: a stand-in process that records every SIGTERM it gets, one line each
RECORDER = """
import signal, sys, time
out, exit_after_s = sys.argv[1], float(sys.argv[2])
first = []
def on_term(signum, frame):
    with open(out, "a") as fh:
        fh.write("TERM\\n")
    first.append(time.monotonic())
signal.signal(signal.SIGTERM, on_term)
open(out + ".ready", "w").close()
while not first or exit_after_s < 0 or time.monotonic() - first[0] < exit_after_s:
    time.sleep(0.01)
sys.exit(0)
"""


class Recorder(NodeProcess):
    """A NodeProcess whose program only records SIGTERMs (exits ``exit_after_s`` after
    the first one; never when negative)."""

    def __init__(self, base: Path, exit_after_s: float) -> None:
        super().__init__("rec", base / "rec")
        self.out = base / "terms.txt"
        self.exit_after_s = exit_after_s

    def argv(self) -> list[str]:
        return [sys.executable, "-c", RECORDER, str(self.out), str(self.exit_after_s)]

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not Path(str(self.out) + ".ready").exists():
            assert time.monotonic() < deadline, "recorder did not start"
            time.sleep(0.01)

    def terms(self) -> int:
        return len(self.out.read_text().splitlines()) if self.out.exists() else 0


def test_stop_signals_once_even_when_called_again(tmp_path: Path) -> None:
    """Two overlapping stop() calls send one SIGTERM; both see the clean exit code."""
    with Recorder(tmp_path, exit_after_s=0.5) as rec:
        rec.start()
        codes: list[int] = []
        t = threading.Thread(target=lambda: codes.append(rec.stop(timeout_s=10)))
        t.start()
        while rec.terms() == 0:
            time.sleep(0.01)
        codes.append(rec.stop(timeout_s=10))
        t.join(15)
        assert codes == [0, 0]
        assert rec.terms() == 1


def test_stop_kills_only_after_its_deadline(tmp_path: Path) -> None:
    """A process that ignores SIGTERM gets exactly one, then SIGKILL at the deadline."""
    with Recorder(tmp_path, exit_after_s=-1) as rec:
        rec.start()
        t0 = time.monotonic()
        code = rec.stop(timeout_s=0.5)
        assert code == -signal.SIGKILL
        assert time.monotonic() - t0 >= 0.5
        assert rec.terms() == 1


def test_daemon_survives_sigterms_during_its_graceful_stop(tmp_path: Path) -> None:
    """A burst of SIGTERMs after the first one does not kill the stopping daemon: it
    exits 0 having logged "stopped" (it used to die with -15)."""
    for i in range(3):
        with NodeProcess(f"n{i}", tmp_path / f"n{i}", sync="none") as n:
            n.start()
            proc = n.proc
            assert proc is not None
            os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                os.kill(proc.pid, signal.SIGTERM)  # our own child (a zombie at worst)
                time.sleep(0.001)
            assert proc.wait(5) == 0, n.log_tail()
            assert '"msg":"stopped"' in n.log_tail(5)
