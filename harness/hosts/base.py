"""One interface for a host reached over SSH (paramiko), and a set of hosts run in parallel.

Owns: `HostSpec` (how to reach a host), `Host` (run a command, upload, download, daemons that
outlive the SSH session, log tails) with one pooled, reconnect-on-failure paramiko connection
per host, `HostSet` (the same on many hosts in parallel, from threads or from async code), and
the harness's remote errors.  Every provider (netns, ssh, vagrant) builds `HostSpec`s and goes
through exactly this code: there is no local shortcut.

Must not: know about Machi, deploy or the nemesis; retry a command that may have started (only
opening the connection or the channel is retried); buffer unbounded output.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import re
import select
import shlex
import signal as signal_mod
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # paramiko costs ~0.4 s to import: only commands that connect pay it
    import paramiko

T = TypeVar("T")

OUTPUT_BYTES_MAX = 16 * 1024 * 1024  # per stream per command; more is cut (and marked)
CONNECT_ATTEMPTS_MAX = 3
PARALLEL_HOSTS_MAX = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# --------------------------------------------------------------------------------------
# Errors


class HostError(Exception):
    """Something about a host failed (base of every harness host error)."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"[{node}] {message}")
        self.node = node


class HostUnreachableError(HostError):
    """The SSH connection could not be made or broke; the command may or may not have run."""


class RemoteCommandError(HostError):
    """A remote command exited non-zero (or did not finish in time: `exit_code` is None)."""

    def __init__(
        self, node: str, command: str, exit_code: int | None, stdout: str, stderr: str
    ) -> None:
        what = "timed out" if exit_code is None else f"exited {exit_code}"
        super().__init__(
            node,
            f"command {what}: {_clip(command, 300)}\n"
            f"  stdout: {_clip(stdout.strip(), 2000)}\n  stderr: {_clip(stderr.strip(), 2000)}",
        )
        self.command = command
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr


class RemoteTimeoutError(RemoteCommandError):
    """A remote command did not finish within its timeout (its channel was closed)."""


class MultiHostError(Exception):
    """One operation failed on some hosts of a `HostSet`; `errors` maps node -> exception."""

    def __init__(self, errors: Mapping[str, BaseException], results: Mapping[str, Any]) -> None:
        lines = [f"{len(errors)} host(s) failed:"] + [f"  {n}: {e}" for n, e in errors.items()]
        super().__init__("\n".join(lines))
        self.errors = dict(errors)
        self.results = dict(results)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


# --------------------------------------------------------------------------------------
# Specs and results


@dataclass(frozen=True)
class HostSpec:
    """How to reach one host and where the harness keeps its files there.

    `address`/`port` are for SSH from the harness; `cluster_address` is the address the
    other hosts see (nemesis rules and the connectivity check use it; with Vagrant port
    forwarding the two differ).  `host_key` pins the server key ("type base64"); otherwise
    `known_hosts_path` is used, and an unknown key is rejected unless
    `accept_unknown_host_key`.
    """

    name: str
    address: str
    port: int = 22
    user: str = "root"
    key_path: str | None = None
    sudo: bool = True
    cluster_address: str | None = None
    probe_port: int = 22
    host_key: str | None = None
    known_hosts_path: str | None = None
    accept_unknown_host_key: bool = False
    work_dir: str = "/tmp/machi-harness"
    data_dir: str = "/tmp/machi-harness/data"
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"bad host name {self.name!r} (letters, digits, _ . -)")
        if not 0 < self.port < 65536 or not 0 < self.probe_port < 65536:
            raise ValueError(f"{self.name}: port out of range")
        for d in (self.work_dir, self.data_dir):
            if not d.startswith("/") or d.rstrip("/") == "":
                raise ValueError(f"{self.name}: directories must be absolute, not /: {d!r}")

    @property
    def peer_address(self) -> str:
        """The address other hosts of the cluster use for this host."""
        return self.cluster_address or self.address


@dataclass(frozen=True)
class Result:
    """What a finished remote command returned."""

    exit_code: int
    stdout: str
    stderr: str
    node: str = ""
    command: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class DaemonSpec:
    """A daemon as the harness started it: enough to restart it the same way."""

    name: str
    argv: tuple[str, ...]
    log_path: str
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    sudo: bool = False


def _command_text(cmd: str | Sequence[str]) -> str:
    return cmd if isinstance(cmd, str) else shlex.join(cmd)


# --------------------------------------------------------------------------------------
# One host


class Host:
    """One host over SSH: one pooled paramiko connection, reopened when it breaks.

    Thread-safe: many threads may run commands at once (each on its own channel).
    `guard` is called before every connection attempt (netns uses it to refuse to talk to
    10.77.0.0/24 from outside its control namespace).
    """

    def __init__(self, spec: HostSpec, *, guard: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self._guard = guard
        self._lock = threading.Lock()
        self._client: paramiko.SSHClient | None = None
        self.daemons: dict[str, DaemonSpec] = {}
        self.connects = 0  # how many connections were opened (reconnects show up here)

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"Host({self.spec.name}, {self.spec.user}@{self.spec.address}:{self.spec.port})"

    # -- connection ---------------------------------------------------------------------

    def _connect(self) -> paramiko.SSHClient:
        import paramiko

        if self._guard is not None:
            self._guard()
        spec = self.spec
        client = paramiko.SSHClient()
        if spec.host_key is not None:
            kind, b64 = spec.host_key.split()[:2]
            key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
            hk_name = spec.address if spec.port == 22 else f"[{spec.address}]:{spec.port}"
            client.get_host_keys().add(hk_name, kind, key)
        elif spec.known_hosts_path:
            client.load_host_keys(os.path.expanduser(spec.known_hosts_path))
        else:
            with contextlib.suppress(OSError):
                client.load_system_host_keys()
        if spec.accept_unknown_host_key:
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        last: Exception | None = None
        for attempt in range(CONNECT_ATTEMPTS_MAX):
            sock: socket.socket | None = None
            try:
                sock = _socket(spec)
                client.connect(
                    spec.address,
                    port=spec.port,
                    sock=sock,
                    username=spec.user,
                    key_filename=os.path.expanduser(spec.key_path) if spec.key_path else None,
                    timeout=spec.connect_timeout_s,
                    banner_timeout=spec.connect_timeout_s,
                    auth_timeout=spec.connect_timeout_s,
                    allow_agent=spec.key_path is None,
                    look_for_keys=spec.key_path is None,
                )
                transport = client.get_transport()
                assert transport is not None
                transport.set_keepalive(15)
                self.connects += 1
                return client
            except paramiko.BadHostKeyException as e:
                client.close()
                raise HostUnreachableError(spec.name, f"host key mismatch: {e}") from e
            except paramiko.AuthenticationException as e:
                client.close()
                raise HostUnreachableError(spec.name, f"authentication failed: {e}") from e
            except (OSError, paramiko.SSHException) as e:
                last = e
                if sock is not None:
                    sock.close()
                time.sleep(0.2 * (attempt + 1))
        client.close()
        raise HostUnreachableError(
            spec.name, f"cannot connect to {spec.address}:{spec.port}: {last}"
        ) from last

    def client(self) -> paramiko.SSHClient:
        """The pooled connection, (re)opened if it is missing or dead."""
        with self._lock:
            c = self._client
            transport = c.get_transport() if c is not None else None
            if c is None or transport is None or not transport.is_active():
                if c is not None:
                    c.close()
                self._client = None
                self._client = self._connect()
            return self._client

    def _drop(self, client: paramiko.SSHClient) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        client.close()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _open_channel(self) -> paramiko.Channel:
        import paramiko

        # Opening a channel has no remote effect, so it is safe to retry once on a fresh
        # connection (the pooled one may have died with a restarted sshd or a partition).
        for attempt in range(2):
            client = self.client()
            try:
                transport = client.get_transport()
                if transport is None:
                    raise paramiko.SSHException("no transport")
                return transport.open_session(timeout=self.spec.connect_timeout_s)
            except (OSError, EOFError, paramiko.SSHException) as e:
                self._drop(client)
                if attempt == 1:
                    raise HostUnreachableError(self.name, f"cannot open channel: {e}") from e
        raise AssertionError("unreachable")

    # -- commands -----------------------------------------------------------------------

    def wrap_sudo(self, text: str, sudo: bool) -> str:
        """`text` as it must be run: under `sudo -n sh -c` when asked and not already root."""
        if not sudo or self.spec.user == "root":
            return text
        if not self.spec.sudo:
            raise HostError(self.name, f"needs sudo but the host has sudo = false: {text}")
        return f"sudo -n -- sh -c {shlex.quote(text)}"

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        sudo: bool = False,
        timeout_s: float = 60.0,
        check: bool = True,
        input: bytes | None = None,
    ) -> Result:
        """Run `cmd` (a shell string, or argv joined with shell quoting) and wait for it.

        Raises `RemoteCommandError` on a non-zero exit when `check`, `RemoteTimeoutError`
        after `timeout_s` (the channel is closed; the remote process may keep running), and
        `HostUnreachableError` when the connection fails or breaks.
        """
        text = self.wrap_sudo(_command_text(cmd), sudo)
        chan = self._open_channel()
        try:
            code, out, err = self._exec(chan, text, timeout_s, input)
        finally:
            chan.close()
        if code is None:
            raise RemoteTimeoutError(self.name, text, None, out, err)
        result = Result(code, out, err, self.name, text)
        if check and code != 0:
            raise RemoteCommandError(self.name, text, code, out, err)
        return result

    def _exec(
        self, chan: paramiko.Channel, text: str, timeout_s: float, input: bytes | None
    ) -> tuple[int | None, str, str]:
        import paramiko

        deadline = time.monotonic() + timeout_s
        out = bytearray()
        err = bytearray()
        try:
            chan.fileno()  # registers the event pipe so select() wakes on stdout and stderr
            chan.exec_command(text)
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            while True:
                drained = False
                while chan.recv_ready():
                    _append(out, chan.recv(65536))
                    drained = True
                while chan.recv_stderr_ready():
                    _append(err, chan.recv_stderr(65536))
                    drained = True
                if chan.exit_status_ready() and (chan.eof_received or chan.closed) and not (
                    chan.recv_ready() or chan.recv_stderr_ready()
                ):
                    break
                if chan.closed and not drained:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return None, _decode(out), _decode(err)
                select.select([chan], [], [], min(left, 0.25))
        except (OSError, EOFError, paramiko.SSHException) as e:
            transport = chan.get_transport()
            if transport is None or not transport.is_active():
                self.close()  # the pooled connection is dead: the next call reconnects
            raise HostUnreachableError(self.name, f"connection broke during {text!r}: {e}") from e
        if not chan.exit_status_ready():
            raise HostUnreachableError(self.name, f"channel closed without exit status: {text}")
        return chan.recv_exit_status(), _decode(out), _decode(err)

    # -- files --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sftp(self) -> Iterator[paramiko.SFTPClient]:
        import paramiko

        client = self.client()
        try:
            sftp = client.open_sftp()
        except (OSError, EOFError, paramiko.SSHException) as e:
            self._drop(client)
            raise HostUnreachableError(self.name, f"cannot open sftp: {e}") from e
        try:
            yield sftp
        finally:
            sftp.close()

    def upload(self, local: str | Path, remote: str, *, mode: int | None = None) -> None:
        """Copy a local file to `remote` (its directory is created)."""
        import paramiko

        self.run(["mkdir", "-p", os.path.dirname(remote) or "/"])
        try:
            with self._sftp() as sftp:
                sftp.put(str(local), remote)
                if mode is not None:
                    sftp.chmod(remote, mode)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostError(self.name, f"upload {local} -> {remote} failed: {e}") from e

    def download(self, remote: str, local: str | Path) -> None:
        """Copy `remote` to a local file (its directory is created)."""
        import paramiko

        Path(local).parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._sftp() as sftp:
                sftp.get(remote, str(local))
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostError(self.name, f"download {remote} -> {local} failed: {e}") from e

    def write_text(self, remote: str, text: str, *, sudo: bool = False) -> None:
        """Write a small text file through the shell (works under sudo, unlike sftp).
        Small: stdin is sent before output is read, so megabytes could stall the channel."""
        q = shlex.quote(remote)
        self.run(f'mkdir -p "$(dirname {q})" && cat > {q}', sudo=sudo, input=text.encode())

    def read_log(self, path: str, tail_bytes: int = 64 * 1024, *, sudo: bool = False) -> str:
        """The last `tail_bytes` of a remote file ('' when it does not exist)."""
        q = shlex.quote(path)
        res = self.run(f"[ ! -e {q} ] || tail -c {int(tail_bytes)} {q}", sudo=sudo)
        return res.stdout

    # -- daemons ------------------------------------------------------------------------

    def _pid_file(self, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad daemon name {name!r}")
        return f"{self.spec.work_dir}/daemons/{name}.pid"

    def start_daemon(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: str,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        sudo: bool = False,
        timeout_s: float = 30.0,
    ) -> int:
        """Start `argv` detached from the SSH session (setsid, stdin /dev/null, output
        appended to `log_path`); return its pid.  The pid file holds pid and start time so
        later signals never hit a reused pid.  Refuses when `name` is already running."""
        spec = DaemonSpec(
            name, tuple(argv), log_path, tuple(sorted((env or {}).items())), cwd, sudo
        )
        for k, _ in spec.env:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise ValueError(f"bad environment variable name {k!r}")
        pf = shlex.quote(self._pid_file(name))
        log = shlex.quote(log_path)
        envs = " ".join(shlex.quote(f"{k}={v}") for k, v in spec.env)
        # The child writes its own pid ($$) before exec: no guessing what setsid forked.
        inner = "echo $$ > \"$0\"; exec \"$@\""
        script = f"""
set -e
pf={pf}
mkdir -p "$(dirname "$pf")" "$(dirname {log})"
{_ALIVE_SH}
if alive; then echo "daemon {name} already running: pid $pid" >&2; exit 17; fi
rm -f "$pf" "$pf.new"
cd {shlex.quote(cwd or self.spec.work_dir)}
setsid env {envs} sh -c {shlex.quote(inner)} "$pf.new" {shlex.join(spec.argv)} \
  >> {log} 2>&1 < /dev/null &
i=0
while [ ! -s "$pf.new" ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done
pid=$(cat "$pf.new" 2>/dev/null || true)
[ -n "$pid" ] || {{ echo "daemon {name} did not start" >&2; exit 1; }}
st=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f20 || true)
[ -n "$st" ] || {{ echo "daemon {name} exited at once; log tail:" >&2; tail -c 2000 {log} >&2;
  exit 1; }}
echo "$pid $st" > "$pf"
rm -f "$pf.new"
echo "$pid"
"""
        self.run(f"mkdir -p {shlex.quote(self.spec.work_dir)}", sudo=sudo)
        res = self.run(script, sudo=sudo, timeout_s=timeout_s)
        self.daemons[name] = spec
        # Kept next to the pid file so a later harness process can restart it the same way.
        self.write_text(self._pid_file(name)[: -len(".pid")] + ".json",
                        json.dumps(dataclasses.asdict(spec)), sudo=sudo)
        return int(res.stdout.strip().splitlines()[-1])

    def daemon_spec(self, name: str) -> DaemonSpec:
        """How `name` was started (from memory, else from the host's daemon directory)."""
        if name in self.daemons:
            return self.daemons[name]
        path = self._pid_file(name)[: -len(".pid")] + ".json"
        res = self.run(f"cat {shlex.quote(path)}", check=False)
        if res.exit_code != 0:
            raise HostError(self.name, f"no daemon {name!r} was ever started here")
        d = json.loads(res.stdout)
        return DaemonSpec(d["name"], tuple(d["argv"]), d["log_path"],
                          tuple((k, v) for k, v in d["env"]), d["cwd"], d["sudo"])

    def restart_daemon(self, name: str, *, timeout_s: float = 30.0) -> int:
        """Start again a daemon the harness started before (same argv, env, log, cwd)."""
        spec = self.daemon_spec(name)
        return self.start_daemon(
            name, spec.argv, log_path=spec.log_path, env=dict(spec.env), cwd=spec.cwd,
            sudo=spec.sudo, timeout_s=timeout_s,
        )

    def daemon_pid(self, name: str, *, sudo: bool = False) -> int | None:
        """The daemon's pid if it is running (not a zombie, same start time), else None."""
        pf = shlex.quote(self._pid_file(name))
        script = f"pf={pf}\n{_ALIVE_SH}\nif alive; then echo $pid; fi"
        out = self.run(script, sudo=sudo).stdout.strip()
        return int(out) if out else None

    def daemon_alive(self, name: str, *, sudo: bool = False) -> bool:
        return self.daemon_pid(name, sudo=sudo) is not None

    def signal_daemon(self, name: str, sig: int | str, *, sudo: bool = False) -> bool:
        """Send `sig` to the daemon's process group; False when it is not running."""
        signame = _signame(sig)
        script = (
            f"pf={shlex.quote(self._pid_file(name))}\n{_ALIVE_SH}\n"
            f"if alive; then kill -s {signame} -- -$pid 2>/dev/null || kill -s {signame} $pid;"
            " echo sent; fi"
        )
        return self.run(script, sudo=sudo).stdout.strip() == "sent"

    def stop_daemon(
        self, name: str, sig: int | str = signal_mod.SIGTERM, *, timeout_s: float = 10.0,
        sudo: bool = False,
    ) -> bool:
        """Signal the daemon (then SIGCONT, in case it is paused), wait up to `timeout_s`
        for it to exit, then SIGKILL its group.  True when it was running."""
        signame = _signame(sig)
        ticks = max(1, int(timeout_s / 0.05))
        script = f"""
pf={shlex.quote(self._pid_file(name))}
{_ALIVE_SH}
if ! alive; then rm -f "$pf"; exit 0; fi
kill -s {signame} -- -$pid 2>/dev/null || kill -s {signame} $pid 2>/dev/null || true
kill -s CONT -- -$pid 2>/dev/null || true
i=0
while alive && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done
if alive; then kill -s KILL -- -$pid 2>/dev/null || kill -s KILL $pid 2>/dev/null || true; fi
i=0
while alive && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
if alive; then echo "daemon {name} (pid $pid) survived SIGKILL" >&2; exit 1; fi
rm -f "$pf"
echo stopped
"""
        res = self.run(script, sudo=sudo, timeout_s=timeout_s + 10)
        return res.stdout.strip() == "stopped"


# A shell function: reads "$pf" into pid/st and succeeds when that very process is alive
# (exists, same start time, not a zombie).  Start time guards against pid reuse.
_ALIVE_SH = r"""
alive() {
  [ -s "$pf" ] || return 1
  read pid st < "$pf" || return 1
  s=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null) || return 1
  [ -n "$s" ] || return 1
  set -- $s
  [ "$1" != Z ] && [ "$1" != X ] || return 1
  cur=$(echo "$s" | cut -d' ' -f20)
  [ "$cur" = "$st" ]
}
"""


TCP_USER_TIMEOUT_MS = 30_000


def _socket(spec: HostSpec) -> socket.socket:
    """A TCP connection whose death is noticed: paramiko waits for some replies without a
    timeout, so the kernel must give up on an unresponsive peer (unacknowledged data for
    30 s, or 3 lost keepalive probes after 10 s idle) and close the transport."""
    sock = socket.create_connection((spec.address, spec.port), timeout=spec.connect_timeout_s)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    return sock


def _signame(sig: int | str) -> str:
    if isinstance(sig, str):
        name = sig.upper().removeprefix("SIG")
        if not hasattr(signal_mod, "SIG" + name):
            raise ValueError(f"unknown signal {sig!r}")
        return name
    return signal_mod.Signals(sig).name.removeprefix("SIG")


def _append(buf: bytearray, data: bytes) -> None:
    room = OUTPUT_BYTES_MAX - len(buf)
    if room > 0:
        buf += data[:room]
        if len(data) > room:
            buf += b"\n[... output cut by the harness ...]\n"


def _decode(buf: bytearray) -> str:
    return bytes(buf).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------
# Many hosts


@dataclass
class HostSet:
    """Hosts of one cluster; operations run on all (or some) of them in parallel threads.

    From async code use `arun`/`amap`: they hop to worker threads through one
    `anyio.CapacityLimiter`, because paramiko blocks.
    """

    hosts: list[Host]
    parallel_max: int = PARALLEL_HOSTS_MAX
    _by_name: dict[str, Host] = field(init=False, repr=False)
    _limiter: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {h.name: h for h in self.hosts}
        if len(self._by_name) != len(self.hosts):
            raise ValueError("duplicate host names")

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def __getitem__(self, name: str) -> Host:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no host {name!r}; hosts are {self.names}") from None

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def addresses(self) -> dict[str, str]:
        """node -> the address the other nodes see."""
        return {h.name: h.spec.peer_address for h in self.hosts}

    def map(
        self, fn: Callable[[Host], T], names: Sequence[str] | None = None, *, check: bool = True
    ) -> dict[str, T]:
        """`fn(host)` on every named host in parallel; results by node.  When any fails,
        raise `MultiHostError` (after all finished) unless `check` is false, in which case
        failed nodes are simply missing from the result."""
        targets = [self[n] for n in names] if names is not None else list(self.hosts)
        if not targets:
            return {}
        results: dict[str, T] = {}
        errors: dict[str, BaseException] = {}
        workers = max(1, min(self.parallel_max, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="host") as pool:
            futures = {h.name: pool.submit(fn, h) for h in targets}
            for name, fut in futures.items():
                try:
                    results[name] = fut.result()
                except Exception as e:
                    errors[name] = e
        if errors and check:
            raise MultiHostError(errors, results)
        return results

    def run_all(
        self,
        cmd: str | Sequence[str] | Callable[[Host], str | Sequence[str]],
        *,
        names: Sequence[str] | None = None,
        sudo: bool = False,
        timeout_s: float = 60.0,
        check: bool = True,
    ) -> dict[str, Result]:
        """Run a command (or a per-host command: a function of the host) everywhere."""

        def one(h: Host) -> Result:
            c = cmd(h) if callable(cmd) else cmd
            return h.run(c, sudo=sudo, timeout_s=timeout_s, check=check)

        return self.map(one, names)

    async def arun(self, name: str, cmd: str | Sequence[str], **kw: Any) -> Result:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(
            partial(self[name].run, cmd, **kw), limiter=self._async_limiter()
        )

    async def amap(
        self, fn: Callable[[Host], T], names: Sequence[str] | None = None, *, check: bool = True
    ) -> dict[str, T]:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(
            partial(self.map, fn, names, check=check), limiter=self._async_limiter()
        )

    def _async_limiter(self) -> Any:
        import anyio

        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.parallel_max)
        return self._limiter

    def close(self) -> None:
        for h in self.hosts:
            h.close()

    def __enter__(self) -> HostSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Cluster = HostSet  # the name for the same thing
