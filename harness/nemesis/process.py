"""Process faults on hosts: SIGKILL and restart, SIGSTOP/SIGCONT, and torn writes.

Owns the mechanics only: signal a named daemon (started through `Host.start_daemon`) on some
hosts in parallel, restart it with the command line it was started with, and damage the tail
of a data file while its daemon is down.  The deploy layer supplies daemon names, command
lines and data file paths; the schedule decides when.

Must not: signal anything but a daemon the harness started (pid files with start times guard
against pid reuse); damage a file whose daemon is running; choose offsets with global
randomness (an rng is passed in).
"""

from __future__ import annotations

import random
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from harness.hosts.base import Host, HostError, HostSet


class ProcessFaultError(Exception):
    """A process fault cannot be applied; the message says why."""


@dataclass(frozen=True)
class TornWrite:
    """What a torn-write fault did to one file (for the history and the report)."""

    node: str
    path: str
    mode: str  # "truncate" or "flip"
    size_before: int
    size_after: int
    offset: int | None = None  # the flipped byte's offset
    mask: int | None = None  # the xor mask applied to it


class ProcessNemesis:
    """Kill/restart, pause/resume a named daemon on hosts; tear the tail of data files."""

    def __init__(self, hosts: HostSet, daemon: str, *, sudo: bool = False) -> None:
        self.hosts = hosts
        self.daemon = daemon
        self.sudo = sudo

    def _signal(self, targets: Sequence[str], sig: signal.Signals) -> dict[str, bool]:
        return self.hosts.map(
            lambda h: h.signal_daemon(self.daemon, sig, sudo=self.sudo), list(targets)
        )

    def kill(self, targets: Sequence[str]) -> dict[str, bool]:
        """SIGKILL the daemon's process group; node -> whether it was running."""
        return self._signal(targets, signal.SIGKILL)

    def pause(self, targets: Sequence[str]) -> dict[str, bool]:
        return self._signal(targets, signal.SIGSTOP)

    def resume(self, targets: Sequence[str]) -> dict[str, bool]:
        return self._signal(targets, signal.SIGCONT)

    def restart(self, targets: Sequence[str]) -> dict[str, int]:
        """Start the daemon again with its original command line; node -> new pid.
        A daemon that is still running (e.g. only paused) is left alone."""

        def one(h: Host) -> int:
            pid = h.daemon_pid(self.daemon, sudo=self.sudo)
            return pid if pid is not None else h.restart_daemon(self.daemon)

        return self.hosts.map(one, list(targets))

    def alive(self, targets: Sequence[str] | None = None) -> dict[str, bool]:
        return self.hosts.map(lambda h: h.daemon_alive(self.daemon, sudo=self.sudo), targets)

    def torn_write(
        self, node: str, path: str, rng: random.Random, *, mode: str = "flip",
        tail_bytes: int = 4096,
    ) -> TornWrite:
        """Damage the last `tail_bytes` of `path` on `node` while its daemon is down:
        `truncate` cuts 1..tail_bytes bytes off; `flip` xors one random byte of the tail
        with a random non-zero mask."""
        host = self.hosts[node]
        if host.daemon_alive(self.daemon, sudo=self.sudo):
            raise ProcessFaultError(f"{node}: {self.daemon} is running; torn writes need it down")
        return tear_file(host, path, rng, mode=mode, tail_bytes=tail_bytes, sudo=self.sudo)


def tear_file(
    host: Host, path: str, rng: random.Random, *, mode: str = "flip", tail_bytes: int = 4096,
    sudo: bool = False,
) -> TornWrite:
    """Truncate or flip bits in the tail of one remote file (POSIX sh, od, dd)."""
    if mode not in ("truncate", "flip"):
        raise ProcessFaultError(f"unknown torn-write mode {mode!r}")
    if tail_bytes < 1:
        raise ProcessFaultError("tail_bytes must be >= 1")
    q = shlex.quote(path)
    try:
        size = int(host.run(f"stat -c %s {q}", sudo=sudo).stdout.strip())
    except HostError as e:
        raise ProcessFaultError(f"{host.name}: cannot stat {path}: {e}") from e
    if size == 0:
        return TornWrite(host.name, path, mode, 0, 0)
    tail = min(tail_bytes, size)
    if mode == "truncate":
        cut = rng.randint(1, tail)
        host.run(f"truncate -s {size - cut} {q}", sudo=sudo)
        after = int(host.run(f"stat -c %s {q}", sudo=sudo).stdout.strip())
        return TornWrite(host.name, path, mode, size, after)
    offset = size - rng.randint(1, tail)
    mask = rng.randint(1, 255)
    script = (
        f"b=$(od -An -tu1 -j {offset} -N1 {q} | tr -d ' ')\n"
        f"nb=$(( b ^ {mask} ))\n"
        f"printf \"$(printf '\\\\%03o' $nb)\" | dd of={q} bs=1 seek={offset} count=1"
        " conv=notrunc status=none\n"
        f"echo $b $nb"
    )
    before_after = host.run(script, sudo=sudo).stdout.split()
    if len(before_after) != 2 or int(before_after[0]) ^ mask != int(before_after[1]):
        raise ProcessFaultError(f"{host.name}: bit flip in {path} misbehaved: {before_after}")
    return TornWrite(host.name, path, mode, size, size, offset, mask)
