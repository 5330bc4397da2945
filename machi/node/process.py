"""Start and stop FLU daemons as local subprocesses (tests, demos, benchmarks).

Owns: spawning ``python -m machi.cli node run`` with a log file, waiting until the node
answers, graceful stop (SIGTERM) and hard kill (SIGKILL) of exactly the process it
started, and bootstrapping a fresh node with a first private projection.  Must not: kill
anything it did not start, or leave a process behind when used as a context manager.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from machi.client.flu_client import FluClient
from machi.core.epoch import EpochId
from machi.core.errors import Written
from machi.core.projection import MemberSpec, make_projection

READY_TIMEOUT_S = 20.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """One ``machi node run`` subprocess on 127.0.0.1.  Logs go to ``<log_path>``."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        sync: str = "batch",
        extra_args: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.sync = sync
        self.extra_args = list(extra_args or [])
        self.log_path = log_path or self.data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: SIGTERM already sent to ``proc``: a second one must not hit a graceful stop
        self._term_sent = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "machi.cli", "node", "run", "--name", self.name,
            "--listen", self.address, "--data-dir", str(self.data_dir), "--sync", self.sync,
            *self.extra_args,
        ]

    def start(self, *, wait: bool = True) -> NodeProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._term_sent = False
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the port accepts connections (or the process died)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.5
            ):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s: {self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM once, wait up to ``timeout_s``; SIGKILL only after that deadline.

        Calling ``stop`` again while the graceful stop runs does not signal again (it only
        waits, with its own deadline).  Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            if not self._term_sent:
                self._term_sent = True
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the process we started (no-op when it already exited)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def client(self, **kw: object) -> FluClient:
        return FluClient(self.host, self.port, **kw)  # type: ignore[arg-type]

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()


async def bootstrap(
    client: FluClient, name: str, *, epoch_number: int = 1, chain: str = "c1",
    members: list[str] | None = None, port: int = 0,
) -> EpochId:
    """Write a first AP private projection (UPI = members) so the node unwedges; returns
    its epoch id.  An already-bootstrapped node keeps its projection."""
    members = members or [name]
    p = make_projection(
        epoch_number=epoch_number, author_server=name, chain_name=chain,
        all_members=members, upi=members,
        members_dict={m: MemberSpec(m, "127.0.0.1", port) for m in members if m == name},
    )
    with contextlib.suppress(Written):
        await client.projection_write("private", p)
    return (await client.wedge_status()).epoch_id

