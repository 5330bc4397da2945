"""Steps of the netns cluster test that run INSIDE the control namespace.

`test_netns_cluster.py` calls each function through `netns.call_in_control_ns`; every step
talks to the hosts only through sshd and paramiko and returns plain observations (JSON)
that the test asserts on.  Not a test module itself (no `test_` prefix).
"""

from __future__ import annotations

import random
import shlex
import time
from pathlib import Path
from typing import Any

import anyio

from harness.hosts import netns
from harness.hosts.base import Host, HostSet, RemoteCommandError
from harness.nemesis import partition as p
from harness.nemesis.process import ProcessNemesis

WEB_PORT = 8000
UDP_PORT = 9000


def _hosts(payload: dict[str, Any]) -> HostSet:
    return netns.open_hosts(state_dir=Path(payload["state_dir"]))


def commands(payload: dict[str, Any]) -> dict[str, Any]:
    with _hosts(payload) as hosts:
        res = hosts.run_all(
            "hostname; ip -4 -o addr show eth0 | awk '{print $4}'; "
            "ip route show default | wc -l; id -u; ip -6 -o addr show | wc -l"
        )
        out = {n: r.stdout.split() for n, r in res.items()}
        try:
            hosts["n1"].run("echo to-stderr >&2; exit 7")
            err: dict[str, Any] = {}
        except RemoteCommandError as e:
            err = {"node": e.node, "exit_code": e.exit_code, "stderr": e.stderr,
                   "command": e.command}
        hosts["n2"].close()
        again = hosts["n2"].run("hostname").stdout.strip()
        transport = hosts["n2"].client().get_transport()
        assert transport is not None
        transport.sock.close()  # the connection breaks under the pool's feet
        broken = hosts["n2"].run("hostname").stdout.strip()

        async def from_async() -> dict[str, str]:
            one = await hosts.arun("n3", "hostname")
            many = await hosts.amap(lambda h: h.run("hostname").stdout.strip())
            return {"one": one.stdout.strip(), **many}

        return {"hosts": out, "error": err, "reconnect": again, "after_break": broken,
                "connects": hosts["n2"].connects,
                "async": anyio.run(from_async)}


def files(payload: dict[str, Any]) -> dict[str, Any]:
    local = Path(payload["local_dir"])
    src = local / "up.bin"
    blob = bytes(range(256)) * 64
    src.write_bytes(blob)
    with _hosts(payload) as hosts:
        h = hosts["n3"]
        remote = f"{h.spec.data_dir}/sub/up.bin"
        h.upload(src, remote)
        remote_sum = h.run(["sha256sum", remote]).stdout.split()[0]
        h.download(remote, local / "down.bin")
    return {"same": (local / "down.bin").read_bytes() == blob, "remote_sha256": remote_sum}


def _web(h: Host) -> int:
    return h.start_daemon(
        "web",
        ["python3", "-m", "http.server", "--bind", h.spec.address, str(WEB_PORT)],
        log_path=f"{h.spec.work_dir}/web.log",
        cwd=h.spec.data_dir,
    )


def _http_get(src: Host, dst: Host, timeout_s: float = 2.0) -> str:
    """'ok' (an HTTP answer), 'noanswer' (connected, silence) or 'refused/unreachable'."""
    script = (
        f"exec 3<>/dev/tcp/{dst.spec.address}/{WEB_PORT} || {{ echo refused; exit 0; }}\n"
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3\n"
        f"if timeout {timeout_s} head -c 12 <&3 | grep -q HTTP; then echo ok; "
        "else echo noanswer; fi"
    )
    return src.run(f"timeout {timeout_s + 2} bash -c {shlex.quote(script)} || echo refused",
                   check=False).stdout.strip().splitlines()[-1]


def daemon(payload: dict[str, Any]) -> dict[str, Any]:
    with _hosts(payload) as hosts:
        n1, n2 = hosts["n1"], hosts["n2"]
        pid = _web(n1)
        n1.close()  # the SSH session that started it is gone
        time.sleep(0.3)
        alive = n1.daemon_alive("web")
        for _ in range(50):
            answer = _http_get(n2, n1)
            if answer == "ok":
                break
            time.sleep(0.1)
        ppid = n1.run(f"ps -o ppid= -p {pid}").stdout.strip()
        parent = n1.run(f"ps -o comm= -p {ppid} || true").stdout.strip()
        session = n1.run(f"ps -o sid= -p {pid}").stdout.strip()
        try:
            _web(n1)
            dup = "started twice"
        except RemoteCommandError as e:
            dup = f"refused: exit {e.exit_code}"
        return {"pid": pid, "alive": alive, "http": answer, "parent": parent,
                "session": session, "dup": dup,
                "log": n1.read_log(f"{n1.spec.work_dir}/web.log", 4000)}


def _udp_sink(h: Host) -> None:
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('{h.spec.address}',{UDP_PORT}))\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    d,a=s.recvfrom(100)\n"
        "    print(a[0], d.decode(), flush=True)\n"
    )
    h.start_daemon("udp", ["python3", "-c", code], log_path=f"{h.spec.work_dir}/udp.log")
    _wait_for(h, "ready")


def _wait_for(h: Host, token: str, timeout_s: float = 10.0) -> str:
    """The sink's log once it contains `token` (or as it is after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = _received(h)
        if token in got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def _udp_send(src: Host, dst: Host, token: str) -> None:
    code = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"[s.sendto(b'{token}',('{dst.spec.address}',{UDP_PORT})) for _ in range(3)]\n"
    )
    src.run(["python3", "-c", code])


def _received(h: Host) -> str:
    return h.read_log(f"{h.spec.work_dir}/udp.log", 10000)


def _tcp(src: Host, dst: Host) -> bool:
    r = src.run(f"timeout 1 bash -c 'exec 3<>/dev/tcp/{dst.spec.address}/22'", check=False)
    return r.exit_code == 0


def partition(payload: dict[str, Any]) -> dict[str, Any]:
    with _hosts(payload) as hosts:
        with p.IptablesNet(hosts) as net:
            out = _partition(hosts, net)
        out["rules_after_with"] = net.rule_counts()  # leaving the block healed
        return out


def _partition(hosts: HostSet, net: p.IptablesNet) -> dict[str, Any]:
    n1, n2, n3 = hosts["n1"], hosts["n2"], hosts["n3"]
    hosts.map(_udp_sink, ["n1", "n2"])
    net.apply(p.one_way("n1", "n2"))  # n2 must not hear n1
    rules = net.rule_counts()
    _udp_send(n1, n2, "cut-1to2")
    _udp_send(n2, n1, "open-2to1")
    _udp_send(n3, n2, "marker-3to2")  # sent after n1's: once it is in, n1's would be too
    got_n1 = _wait_for(n1, "open-2to1")
    got_n2 = _wait_for(n2, "marker-3to2")
    during = {
        "tcp_n1_n2": _tcp(n1, n2), "tcp_n3_n2": _tcp(n3, n2), "tcp_n2_n3": _tcp(n2, n3),
        "probe_failed": [list(x) for x in net.probe().failed],
    }
    report = net.heal_and_check()
    _udp_send(n1, n2, "healed-1to2")
    after = {"rules": net.rule_counts(), "ok_pairs": len(report.ok),
             "tcp_n1_n2": _tcp(n1, n2), "n2_got": _wait_for(n2, "healed-1to2")}
    hosts.map(lambda h: h.stop_daemon("udp"), ["n1", "n2"])
    # Packet loss: every node drops half of what the others send it.
    net.apply(p.complete_grudge([["n1"], ["n2"], ["n3"]]), probability=0.5)
    lossy = hosts["n3"].run("iptables -w -S MACHI-NEMESIS").stdout
    return {"rules": rules, "n2_got": got_n2, "n1_got": got_n1, "during": during,
            "after": after, "lossy_rules": lossy}


def _state(h: Host, pid: int) -> str:
    return h.run(f"sed 's/.*) //' /proc/{pid}/stat | cut -c1").stdout.strip()


def signals(payload: dict[str, Any]) -> dict[str, Any]:
    with _hosts(payload) as hosts:
        n1, n2 = hosts["n1"], hosts["n2"]
        nem = ProcessNemesis(hosts, "web")
        pid = n1.daemon_pid("web")
        assert pid is not None, "the daemon step must have started web on n1"
        out: dict[str, Any] = {"pid": pid}
        out["pause"] = nem.pause(["n1"])
        out["paused_state"] = _state(n1, pid)
        out["paused_http"] = _http_get(n2, n1, timeout_s=1.0)
        out["resume"] = nem.resume(["n1"])
        out["resumed_http"] = _http_get(n2, n1)
        out["kill"] = nem.kill(["n1"])
        for _ in range(100):  # SIGKILL is asynchronous: wait (bounded) until it is gone
            out["killed_alive"] = nem.alive(["n1"])
            if not out["killed_alive"]["n1"]:
                break
            time.sleep(0.05)
        out["killed_http"] = _http_get(n2, n1, timeout_s=1.0)
        out["kill_again"] = nem.kill(["n1"])
        new_pid = nem.restart(["n1"])["n1"]
        out["restarted_pid"] = new_pid
        for _ in range(50):
            out["restarted_http"] = _http_get(n2, n1)
            if out["restarted_http"] == "ok":
                break
            time.sleep(0.1)
        # Leave it paused on purpose: `cluster down` must still remove it.
        nem.pause(["n1"])
        out["left_paused_pid"] = new_pid
        return out


def torn(payload: dict[str, Any]) -> dict[str, Any]:
    with _hosts(payload) as hosts:
        h = hosts["n3"]
        nem = ProcessNemesis(hosts, "store")
        path = f"{h.spec.data_dir}/chunks.dat"
        h.run(f"head -c 10000 /dev/zero > {path}")
        flip = nem.torn_write("n3", path, random.Random(5), mode="flip", tail_bytes=100)
        dump = h.run(f"od -An -tu1 -v {path} | tr -s ' ' '\\n' | grep -v '^$'").stdout.split()
        nonzero = [(i, int(b)) for i, b in enumerate(dump) if b != "0"]
        cut = nem.torn_write("n3", path, random.Random(6), mode="truncate", tail_bytes=100)
        size = int(h.run(f"stat -c %s {path}").stdout)
        # A running daemon's files are never damaged.
        h.start_daemon("store", ["sleep", "30"], log_path=f"{h.spec.work_dir}/store.log")
        try:
            nem.torn_write("n3", path, random.Random(7))
            refused = False
        except Exception:
            refused = True
        h.stop_daemon("store")
        return {"flip": flip.__dict__, "nonzero": nonzero, "cut": cut.__dict__, "size": size,
                "refused_while_running": refused}


def leave_mess(payload: dict[str, Any]) -> dict[str, Any]:
    """Simulate a crashed harness: an active partition and daemons left behind."""
    with _hosts(payload) as hosts:
        net = p.IptablesNet(hosts)
        net.apply(p.isolate(hosts.names, "n3"))
        pid = hosts["n2"].start_daemon("sleeper", ["sleep", "600"],
                                       log_path=f"{hosts['n2'].spec.work_dir}/s.log")
        return {"rules": net.rule_counts(), "sleeper_pid": pid}


def ssh_provider(payload: dict[str, Any]) -> dict[str, Any]:
    """The same hosts described by a TOML file, with host keys from a known_hosts file."""
    from harness.hosts import providers, ssh

    state = Path(payload["state_dir"])
    toml = Path(payload["local_dir"]) / "hosts.toml"
    entries = "".join(
        f'[[hosts]]\nname = "{n}"\naddress = "10.77.0.{10 + i}"\n'
        for i, n in enumerate(["n1", "n2", "n3"], start=1)
    )
    toml.write_text(
        f'[defaults]\nkey = "{state}/client_key"\nknown_hosts = "{state}/known_hosts"\n'
        f'connect_timeout_s = 5\n{entries}'
    )
    with providers.open_hosts("ssh", hosts_file=toml) as hosts:
        names = {n: r.stdout.strip() for n, r in hosts.run_all("hostname").items()}
    strict = ssh.parse_hosts_toml(
        f'[[hosts]]\nname = "n1"\naddress = "10.77.0.11"\nkey = "{state}/client_key"\n'
        f'known_hosts = "/dev/null"\n'
    )[0]
    try:
        Host(strict, guard=netns.require_control_namespace).run("true")
        unknown_key = "accepted"
    except Exception as e:
        unknown_key = f"{type(e).__name__}: {e}"
    return {"names": names, "unknown_key": unknown_key}


def executor(payload: dict[str, Any]) -> dict[str, Any]:
    """A hand-written schedule carried out by the executor against a dummy daemon."""
    from harness.nemesis.executor import NemesisExecutor
    from harness.nemesis.schedule import FaultEvent, grudge_param

    with _hosts(payload) as hosts:
        for h in hosts:
            h.start_daemon("dummy", ["sleep", "300"], log_path=f"{h.spec.work_dir}/dummy.log")
            h.run(f"head -c 1000 /dev/zero > {h.spec.data_dir}/f1")
        procs = ProcessNemesis(hosts, "dummy")
        with p.IptablesNet(hosts) as net:
            ex = NemesisExecutor(
                net, procs, chain_view=lambda: (["n3", "n1", "n2"], []),
                data_files=lambda n: [f"{hosts[n].spec.data_dir}/f1"],
            )
            halves = p.complete_grudge([["n1"], ["n2", "n3"]])
            events = [
                FaultEvent(1.0, "partition", ("n1", "n2", "n3"),
                           (("kind", "halves"), ("grudge", grudge_param(halves)))),
                FaultEvent(2.0, "heal", ("n1", "n2", "n3")),
                FaultEvent(3.0, "kill", ("n2",)),
                FaultEvent(3.5, "torn-write", ("n2",), (("mode", "truncate"), ("rng_seed", 1))),
                FaultEvent(4.0, "restart", ("n2",)),
                FaultEvent(5.0, "pause", ("n3",)),
                FaultEvent(5.5, "torn-write", ("n3",), (("mode", "flip"), ("rng_seed", 2))),
                FaultEvent(6.0, "resume", ("n3",)),
                FaultEvent(7.0, "partition", ("n1", "n2", "n3"),
                           (("kind", "isolate-head"), ("rng_seed", 3))),
                FaultEvent(7.5, "partition", ("n1", "n2", "n3"),
                           (("kind", "isolate-repairing"), ("rng_seed", 4))),
                FaultEvent(8.0, "heal", ("n1", "n2", "n3")),
            ]
            records = [ex.apply(e) for e in events]
            procs.kill(["n1"])
            procs.pause(["n3"])
            net.apply(halves)
            healed = ex.heal_all()
            after = {"alive": procs.alive(), "rules": net.rule_counts(), "healed": healed,
                     "states": {h.name: _state(h, h.daemon_pid("dummy") or 0) for h in hosts}}
        hosts.map(lambda h: h.stop_daemon("dummy"))
        return {"records": records, "after": after}
