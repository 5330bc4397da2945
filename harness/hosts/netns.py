"""The netns provider: a cluster of hosts as Linux network namespaces on this machine.

Owns `cluster up/down/status` for namespaces `machi-n1..machi-nN` (the hosts), `machi-br`
(a bridge joining them) and `machi-ctl` (where the harness runs), each host running its own
sshd, and the helpers that re-exec a Python entry point inside the control namespace.
Layout (see docs/harness-hosts.md for the picture):

    machi-ctl  eth0 10.77.0.2  --veth--  [br0 in machi-br]  --veth--  eth0 10.77.0.1N  machi-nN

The root namespace gets no interface, no route and no iptables rule: every veth is created
inside `machi-br` with its peer moved straight into the host's namespace, and no namespace has
a default route.  Packets to 10.77.0.0/24 therefore exist only between these namespaces; if
setup fails half-way they have nowhere to go, and `Host` connections made from outside
`machi-ctl` are refused by a guard.

Everything the cluster owns is recorded in a state directory (default `/run/machi-netns`)
*before* it is created, so `cluster down` works from the state directory alone after a crash,
and is idempotent.  Must not: touch the root namespace's links, routes or iptables; kill any
process it did not start (it kills recorded sshd pids and processes living inside its own
namespaces, nothing else).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.hosts.base import Host, HostSet, HostSpec

NS_PREFIX_DEFAULT = "machi-"
SUBNET = "10.77.0.0/24"
CONTROL_ADDRESS = "10.77.0.2"
NODES_MAX = 32
STATE_FILE = "cluster.json"
MARKER_FILE = ".machi-netns"
SSHD = "/usr/sbin/sshd"
NETNS_RUN_DIR = Path("/run/netns")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}-([a-z0-9]{1,8}-)?$")
REPO_ROOT = Path(__file__).resolve().parents[2]


class NetnsError(Exception):
    """The netns cluster cannot be built, used or removed; the message says why."""


def node_address(index: int) -> str:
    """The 10.77 address of host n<index> (1-based): n1 = 10.77.0.11."""
    if not 1 <= index <= NODES_MAX:
        raise ValueError(f"node index {index} out of 1..{NODES_MAX}")
    return f"10.77.0.{10 + index}"


def ns_prefix() -> str:
    """Namespace name prefix: `machi-` unless $MACHI_NETNS_PREFIX says otherwise (tests use
    their own prefix so they never touch a cluster someone else brought up)."""
    p = os.environ.get("MACHI_NETNS_PREFIX", NS_PREFIX_DEFAULT)
    if not _PREFIX_RE.match(p):
        raise NetnsError(f"bad MACHI_NETNS_PREFIX {p!r} (like 'machi-' or 'machi-t42-')")
    return p


def bridge_ns() -> str:
    return ns_prefix() + "br"


def control_ns() -> str:
    return ns_prefix() + "ctl"


def ns_name(node: str) -> str:
    return ns_prefix() + node


def _ours(ns: str, prefix: str | None = None) -> bool:
    pre = prefix if prefix is not None else ns_prefix()
    return re.fullmatch(re.escape(pre) + r"(br|ctl|n\d{1,3})", ns) is not None


def state_dir_default() -> Path:
    """$MACHI_NETNS_STATE_DIR, else /run/<prefix>netns (/run/machi-netns by default)."""
    env = os.environ.get("MACHI_NETNS_STATE_DIR")
    return Path(env) if env else Path("/run") / f"{ns_prefix()}netns"


@dataclass(frozen=True)
class NodeState:
    name: str
    netns: str
    address: str
    host_dir: str
    sshd_pid: int | None = None
    sshd_starttime: str | None = None


# --------------------------------------------------------------------------------------
# Small helpers


def _sh(argv: list[str], *, check: bool = True, timeout_s: float = 30.0) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as e:
        raise NetnsError(f"{argv[0]} not found (run scripts/install-system-deps)") from e
    if check and p.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def _ip(*args: str, check: bool = True) -> str:
    return _sh(["ip", *args], check=check)


def netns_list() -> list[str]:
    """Names of all network namespaces known to `ip netns`."""
    out = _sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def our_namespaces() -> list[str]:
    """Existing namespaces whose names this provider owns (machi-br, machi-ctl, machi-nN)."""
    return [n for n in netns_list() if _ours(n)]


def _proc_starttime(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _ns_inode(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def in_control_namespace() -> bool:
    """True when this process's network namespace is `machi-ctl`."""
    ctl = _ns_inode(NETNS_RUN_DIR / control_ns())
    return ctl is not None and ctl == _ns_inode("/proc/self/ns/net")


def require_control_namespace() -> None:
    """The guard every netns `Host` runs before connecting."""
    if not in_control_namespace():
        raise NetnsError(
            f"refusing to talk to {SUBNET} from outside the {control_ns()} namespace "
            "(use reexec_in_control_ns / call_in_control_ns)"
        )


def preflight() -> str | None:
    """Why a netns cluster cannot be built here (None when it can)."""
    if os.geteuid() != 0:
        return "the netns provider needs root"
    if sys.platform != "linux":
        return "the netns provider needs Linux"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is missing"
    probe = f"machi-probe-{os.getpid()}"
    try:
        p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if p.returncode != 0:
            return f"ip netns add fails here: {p.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def install_system_deps() -> None:
    """Run scripts/install-system-deps (apt-get when sshd/iptables/iproute2 are missing)."""
    script = REPO_ROOT / "scripts" / "install-system-deps"
    if script.exists():
        p = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise NetnsError(f"install-system-deps failed: {p.stderr.strip()[-2000:]}")
    for tool in (SSHD, "/usr/bin/ssh-keygen"):
        if not os.access(tool, os.X_OK):
            raise NetnsError(f"{tool} missing (apt-get install openssh-server openssh-client)")
    if shutil.which("iptables") is None and not os.access("/usr/sbin/iptables", os.X_OK):
        raise NetnsError("iptables missing (apt-get install iptables)")


# --------------------------------------------------------------------------------------
# State


def load_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"corrupt": True}


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, state_dir / STATE_FILE)


# --------------------------------------------------------------------------------------
# Up


def _sshd_config(host_dir: Path, address: str, state_dir: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {address}",
            "Port 22",
            f"HostKey {host_dir}/ssh_host_ed25519_key",
            f"PidFile {host_dir}/sshd.pid",
            # The harness's own key (root), then the user's own file: a test logs in as a
            # non-root user with sudo, as on a user's SSH hosts (sshd reads that file as
            # the user, who cannot read the root-only state dir).
            f"AuthorizedKeysFile {state_dir}/authorized_keys .ssh/authorized_keys",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "UseDNS no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "PrintMotd no",
            "MaxStartups 100:30:200",
            "MaxSessions 100",
            "ClientAliveInterval 30",
            "Subsystem sftp internal-sftp",
            # The hosts share this machine's /root: without this, bash would source root's
            # interactive ~/.bashrc for every command (bash does so when run by sshd at
            # SHLVL 0), leaking the developer's PATH into the hosts and costing ~150 ms
            # per command.  SHLVL=1 makes each command start like on a fresh server.
            "SetEnv SHLVL=1",
            "LogLevel INFO",
            "",
        ]
    )


def _keygen(path: Path, comment: str) -> None:
    _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)


def cluster_up(nodes: int, *, state_dir: Path | None = None, install: bool = True) -> None:
    """Build the cluster: namespaces, bridge, veths, addresses, keys, one sshd per host.

    On any failure everything created so far is removed again (`cluster_down`).
    """
    state_dir = state_dir or state_dir_default()
    if not 1 <= nodes <= NODES_MAX:
        raise NetnsError(f"--nodes must be in 1..{NODES_MAX}")
    why = preflight()
    if why:
        raise NetnsError(why)
    if (state_dir / STATE_FILE).exists():
        raise NetnsError(f"a netns cluster is already up ({state_dir}); run `cluster down`")
    if state_dir.exists() and any(state_dir.iterdir()) and not (state_dir / MARKER_FILE).exists():
        # `down` deletes the state directory: never adopt one that holds other files.
        raise NetnsError(f"state directory {state_dir} exists and is not empty; pick another")
    leftovers = our_namespaces()
    if leftovers:
        raise NetnsError(f"namespaces {leftovers} exist without state; run `cluster down`")
    if install:
        install_system_deps()
    try:
        _build(nodes, state_dir)
    except BaseException:
        cluster_down(state_dir=state_dir)
        raise


def _build(nodes: int, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)
    (state_dir / MARKER_FILE).write_text("owned by machi-harness netns provider\n")
    names = [f"n{i}" for i in range(1, nodes + 1)]
    node_states = [
        NodeState(n, ns_name(n), node_address(i), str(state_dir / "hosts" / n))
        for i, n in enumerate(names, start=1)
    ]
    state: dict[str, Any] = {
        "version": 1,
        "prefix": ns_prefix(),
        "subnet": SUBNET,
        "bridge_ns": bridge_ns(),
        "control": {"netns": control_ns(), "address": CONTROL_ADDRESS},
        "namespaces": [bridge_ns(), control_ns()] + [s.netns for s in node_states],
        "nodes": [s.__dict__ for s in node_states],
        "created_unix_s": int(time.time()),
    }
    _save_state(state_dir, state)  # intent first: `down` can clean a half-built cluster

    _keygen(state_dir / "client_key", "machi-harness")
    pub = (state_dir / "client_key.pub").read_text()
    (state_dir / "authorized_keys").write_text(pub)
    (state_dir / "authorized_keys").chmod(0o600)

    _ip("netns", "add", bridge_ns())
    _no_ipv6(bridge_ns())
    _ip("-n", bridge_ns(), "link", "set", "lo", "up")
    _ip("-n", bridge_ns(), "link", "add", "br0", "type", "bridge")
    _ip("-n", bridge_ns(), "link", "set", "br0", "up")
    for ns, addr, tag in [(control_ns(), CONTROL_ADDRESS, "ctl")] + [
        (s.netns, s.address, s.name) for s in node_states
    ]:
        _ip("netns", "add", ns)
        _no_ipv6(ns)
        # The veth is born inside machi-br and its peer goes straight into the host:
        # the root namespace never holds either end.
        _ip("-n", bridge_ns(), "link", "add", f"veth-{tag}", "type", "veth",
            "peer", "name", "eth0", "netns", ns)
        _ip("-n", bridge_ns(), "link", "set", f"veth-{tag}", "master", "br0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        routes = _ip("-n", ns, "route", "show", "default")
        if routes.strip():
            raise NetnsError(f"{ns} has a default route ({routes.strip()}); refusing")

    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    known = []
    for i, s in enumerate(node_states):
        hd = Path(s.host_dir)
        for sub in ("", "data", "work"):
            (hd / sub).mkdir(parents=True, exist_ok=True)
        _keygen(hd / "ssh_host_ed25519_key", f"machi-{s.name}")
        hostpub = (hd / "ssh_host_ed25519_key.pub").read_text().split()
        known.append(f"{s.address} {hostpub[0]} {hostpub[1]}")
        (hd / "sshd_config").write_text(_sshd_config(hd, s.address, state_dir))
        _sh([SSHD, "-t", "-f", str(hd / "sshd_config")])
        pid, st = _start_sshd(s, hd)
        node_states[i] = NodeState(s.name, s.netns, s.address, s.host_dir, pid, st)
        state["nodes"] = [n.__dict__ for n in node_states]
        _save_state(state_dir, state)
    (state_dir / "known_hosts").write_text("\n".join(known) + "\n")
    for s in node_states:
        _wait_port_from_control(s.address, 22, timeout_s=10.0)


def _no_ipv6(ns: str) -> None:
    # The nemesis filters IPv4 only; without IPv6 (link-local addresses appear on every
    # veth otherwise) no packet between hosts can take a path the nemesis does not cut.
    # Per-namespace sysctls: the root namespace is not affected.
    _sh(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
         "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        check=False)


def _start_sshd(s: NodeState, hd: Path) -> tuple[int, str]:
    # `unshare --uts` gives the host its own hostname; sshd (and every session and daemon
    # it spawns) inherits both the network namespace and the UTS namespace.
    script = f"hostname {s.name} && exec {SSHD} -f {hd}/sshd_config -E {hd}/sshd.log"
    _sh(["ip", "netns", "exec", s.netns, "unshare", "--uts", "sh", "-c", script])
    pid_file = hd / "sshd.pid"
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            st = _proc_starttime(pid)
            if st is not None:
                return pid, st
        time.sleep(0.02)
    log = (hd / "sshd.log").read_text() if (hd / "sshd.log").exists() else ""
    raise NetnsError(f"sshd for {s.name} did not start: {log[-2000:]}")


def _wait_port_from_control(address: str, port: int, *, timeout_s: float) -> None:
    probe = f"exec 3<>/dev/tcp/{address}/{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        p = subprocess.run(
            ["ip", "netns", "exec", control_ns(), "timeout", "2", "bash", "-c", probe],
            capture_output=True,
        )
        if p.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise NetnsError(f"{address}:{port} not reachable from {control_ns()}")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------
# Down


def _pids_in_namespaces(ns_names: list[str]) -> list[int]:
    inodes = {i for i in (_ns_inode(NETNS_RUN_DIR / n) for n in ns_names) if i is not None}
    if not inodes:
        return []
    mine = {os.getpid(), os.getppid()}
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        if _ns_inode(d / "ns" / "net") in inodes:
            pids.append(int(d.name))
    return pids


def _daemon_pids(state_dir: Path) -> list[int]:
    """Daemons the harness started on the hosts (their pid files, checked by start time)."""
    pids = []
    for pf in state_dir.glob("hosts/*/work/daemons/*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid_text, st = pf.read_text().split()[:2]
            if _proc_starttime(int(pid_text)) == st:
                pids.append(int(pid_text))
    return pids


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def cluster_down(*, state_dir: Path | None = None) -> list[str]:
    """Remove everything a netns cluster owns: its processes (recorded sshd pids and any
    process inside its namespaces), namespaces (taking veths, bridge and iptables rules
    with them) and the state directory.  Idempotent; works after a crash.  Returns a list
    of what was removed."""
    state_dir = state_dir or state_dir_default()
    if in_control_namespace():
        raise NetnsError(f"run `cluster down` outside {control_ns()} (it would kill itself)")
    foreign = state_dir.exists() and any(state_dir.iterdir())
    if foreign and not (state_dir / MARKER_FILE).exists():
        raise NetnsError(f"{state_dir} is not a machi-netns state dir; not touching anything")
    removed: list[str] = []
    state = load_state(state_dir) or {}
    # The state's own prefix wins: `down` must not depend on the caller's environment.
    prefix = state.get("prefix", ns_prefix())
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        prefix = ns_prefix()
    present = netns_list()
    ns_names = sorted(set(state.get("namespaces", [])) | {n for n in present if _ours(n, prefix)})
    ns_names = [n for n in ns_names if _ours(n, prefix)]
    sshd = []
    for n in state.get("nodes", []):
        pid, st = n.get("sshd_pid"), n.get("sshd_starttime")
        if pid and st and _proc_starttime(pid) == st:
            sshd.append(pid)
    victims = sorted(set(sshd) | set(_daemon_pids(state_dir)) | set(_pids_in_namespaces(ns_names)))
    if victims:
        _kill(victims, signal.SIGKILL)  # paused daemons die too; nothing to flush here
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_proc_starttime(p) for p in victims):
            time.sleep(0.02)
        removed.append(f"processes {victims}")
    for ns in ns_names:
        if ns in netns_list():
            _ip("netns", "del", ns, check=False)
            removed.append(f"netns {ns}")
    left = [n for n in ns_names if n in netns_list()]
    if left:
        raise NetnsError(f"could not delete namespaces {left}")
    if state_dir.exists():
        shutil.rmtree(state_dir)  # checked above: ours (marker) or empty
        removed.append(f"state {state_dir}")
    return removed


@contextlib.contextmanager
def temporary_cluster(
    nodes: int, *, prefix: str | None = None, install: bool = True
) -> Iterator[Path]:
    """A cluster under its own namespace prefix (default `machi-t<pid>-`) for the duration
    of a `with` block (tests, one-off runs); yields its state directory.  Sets
    $MACHI_NETNS_PREFIX meanwhile so subprocesses (`call_in_control_ns`, the CLI) find it;
    always taken down, also when the body fails."""
    pre = prefix or f"machi-t{os.getpid() % 100000}-"
    old = os.environ.get("MACHI_NETNS_PREFIX")
    os.environ["MACHI_NETNS_PREFIX"] = pre
    try:
        state_dir = state_dir_default()
        try:
            cluster_up(nodes, state_dir=state_dir, install=install)
            yield state_dir
        finally:
            cluster_down(state_dir=state_dir)
    finally:
        if old is None:
            os.environ.pop("MACHI_NETNS_PREFIX", None)
        else:
            os.environ["MACHI_NETNS_PREFIX"] = old


# --------------------------------------------------------------------------------------
# Status and hosts


def cluster_status(*, state_dir: Path | None = None) -> dict[str, Any]:
    """What exists: per node its namespace, sshd pid/liveness and nemesis rule count."""
    state_dir = state_dir or state_dir_default()
    state = load_state(state_dir)
    present = set(netns_list())
    out: dict[str, Any] = {
        "state_dir": str(state_dir),
        "up": state is not None and not state.get("corrupt"),
        "namespaces": sorted(n for n in present if _ours(n)),
        "nodes": [],
    }
    for n in (state or {}).get("nodes", []):
        alive = bool(n.get("sshd_pid")) and _proc_starttime(n["sshd_pid"]) == n.get(
            "sshd_starttime"
        )
        rules = None
        if n["netns"] in present:
            p = subprocess.run(
                ["ip", "netns", "exec", n["netns"], "iptables", "-w", "-S", "MACHI-NEMESIS"],
                capture_output=True, text=True,
            )
            rules = sum(1 for ln in p.stdout.splitlines() if ln.startswith("-A")) if (
                p.returncode == 0
            ) else 0
        out["nodes"].append(
            {"name": n["name"], "address": n["address"], "netns": n["netns"],
             "netns_present": n["netns"] in present, "sshd_pid": n.get("sshd_pid"),
             "sshd_alive": alive, "nemesis_rules": rules,
             "daemons": _daemons(Path(n["host_dir"]))}
        )
    return out


def _daemons(host_dir: Path) -> dict[str, int | None]:
    """Daemons started on a host: name -> pid when running, None when not."""
    out: dict[str, int | None] = {}
    for pf in sorted(host_dir.glob("work/daemons/*.pid")):
        pid: int | None = None
        with contextlib.suppress(OSError, ValueError):
            pid_text, st = pf.read_text().split()[:2]
            pid = int(pid_text) if _proc_starttime(int(pid_text)) == st else None
        out[pf.stem] = pid
    return out


def host_specs(*, state_dir: Path | None = None) -> list[HostSpec]:
    """HostSpecs of the running netns cluster (root over ssh, pinned host keys)."""
    state_dir = state_dir or state_dir_default()
    state = load_state(state_dir)
    if not state or state.get("corrupt"):
        raise NetnsError(f"no netns cluster is up ({state_dir}); run `cluster up`")
    specs = []
    for n in state["nodes"]:
        hd = Path(n["host_dir"])
        kind, b64 = (hd / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        specs.append(
            HostSpec(
                name=n["name"], address=n["address"], port=22, user="root",
                key_path=str(state_dir / "client_key"), sudo=False,
                host_key=f"{kind} {b64}", work_dir=str(hd / "work"),
                data_dir=str(hd / "data"), connect_timeout_s=5.0,
            )
        )
    return specs


def open_hosts(*, state_dir: Path | None = None) -> HostSet:
    """A HostSet for the netns cluster; only usable inside the control namespace."""
    require_control_namespace()
    return HostSet([Host(s, guard=require_control_namespace) for s in host_specs(
        state_dir=state_dir)])


# --------------------------------------------------------------------------------------
# Running code inside the control namespace

_REEXEC_GUARD = "MACHI_NETNS_REEXEC"


def control_ns_argv(argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", control_ns(), *argv]


def reexec_in_control_ns(args: list[str]) -> None:
    """Replace this process by `machi-harness <args>` inside machi-ctl (no-op when already
    there).  Used by the CLI: everything after this call talks to the cluster."""
    if in_control_namespace():
        return
    if os.environ.get(_REEXEC_GUARD):
        raise NetnsError(f"re-exec into {control_ns()} did not land there")
    if control_ns() not in netns_list():
        raise NetnsError(f"no {control_ns()} namespace: run `machi-harness cluster up` first")
    os.environ[_REEXEC_GUARD] = "1"
    code = "import sys; from harness.cli import main; sys.argv[0] = 'machi-harness'; main()"
    argv = control_ns_argv([sys.executable, "-c", code, *args])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


def call_in_control_ns(
    target: str,
    payload: Any = None,
    *,
    extra_sys_path: list[str] | None = None,
    timeout_s: float = 120.0,
) -> Any:
    """Run `module:function(payload)` in a fresh Python inside machi-ctl and return its
    JSON result.  The payload and the result travel as JSON over stdin/stdout."""
    if control_ns() not in netns_list():
        raise NetnsError(f"no {control_ns()} namespace: bring the cluster up first")
    env = dict(os.environ)
    paths = [*(extra_sys_path or []), str(REPO_ROOT)]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = (
        "import json, sys, importlib\n"
        "mod, fn = sys.argv[1].split(':')\n"
        "out = getattr(importlib.import_module(mod), fn)(json.load(sys.stdin))\n"
        "sys.stdout.write('\\n@@RESULT@@' + json.dumps(out))\n"
    )
    p = subprocess.run(
        control_ns_argv([sys.executable, "-c", code, target]),
        input=json.dumps(payload), capture_output=True, text=True, timeout=timeout_s, env=env,
    )
    if p.returncode != 0 or "@@RESULT@@" not in p.stdout:
        raise NetnsError(
            f"{target} failed in {control_ns()} (exit {p.returncode}):\n"
            f"{p.stdout[-4000:]}\n{p.stderr[-8000:]}"
        )
    return json.loads(p.stdout.rsplit("@@RESULT@@", 1)[1])


_WORKER_CODE = r"""
import importlib, json, os, sys, traceback
out = os.fdopen(os.dup(1), "w")  # replies only; the steps' own prints go to stderr
os.dup2(2, 1)
sys.stdout = sys.stderr
for line in sys.stdin:
    req = json.loads(line)
    try:
        mod, fn = req["target"].split(":")
        res = {"ok": True, "result": getattr(importlib.import_module(mod), fn)(req["payload"])}
    except BaseException:
        res = {"ok": False, "error": traceback.format_exc()}
    out.write(json.dumps(res) + "\n")
    out.flush()
"""


class ControlNamespaceWorker:
    """One Python process inside the control namespace that runs many `module:function`
    calls (JSON in, JSON out): `call_in_control_ns` without a fresh interpreter and fresh
    imports per call.  Use as a context manager; the process ends with the block."""

    def __init__(self, *, extra_sys_path: list[str] | None = None) -> None:
        self.extra_sys_path = extra_sys_path or []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ControlNamespaceWorker:
        if control_ns() not in netns_list():
            raise NetnsError(f"no {control_ns()} namespace: bring the cluster up first")
        env = dict(os.environ)
        paths = [*self.extra_sys_path, str(REPO_ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
        self._proc = subprocess.Popen(
            control_ns_argv([sys.executable, "-c", _WORKER_CODE]), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=None, text=True, env=env,
        )
        return self

    def call(self, target: str, payload: Any = None, *, timeout_s: float = 120.0) -> Any:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise NetnsError("the control namespace worker is not running")
        proc.stdin.write(json.dumps({"target": target, "payload": payload}) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        if not ready:
            self.__exit__(None, None, None)
            raise NetnsError(f"{target} did not answer within {timeout_s} s (worker stopped)")
        line = proc.stdout.readline()
        if not line:
            raise NetnsError(f"{target}: the worker died (exit {proc.wait()})")
        res = json.loads(line)
        if not res["ok"]:
            raise NetnsError(f"{target} failed in {control_ns()}:\n{res['error']}")
        return res["result"]

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
