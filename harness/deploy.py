"""Deploy Machi-py onto harness hosts: wheel, install, config, daemons, chain bootstrap,
teardown with every node's artefacts.

Owns: building a wheel of this checkout (cached by a hash of its sources), uploading and
installing it on each host into `<work_dir>/lib-<hash>` (an identical install is reused:
the wheel hash is stored next to it), writing each node's TOML config, starting the
`machi node run` daemons (detached from SSH, via `Host.start_daemon`), bootstrapping the
chain with CHAIN_BOOTSTRAP and waiting (bounded) for a stable projection, and at the end
stopping the daemons and downloading each node's log, metrics snapshot and projection log.

The same code path serves every provider: the wheel is always uploaded and installed over
SSH.  Only the host interpreter differs: on netns hosts (this machine) it is the harness's
own Python, whose site-packages already hold the dependencies (`--no-deps`); on remote hosts
it is `python3` (or a provisioned venv) and dependencies may be installed from the index.

Must not: talk to hosts from outside the control namespace (the Host guard refuses), leave
daemons running after `teardown`, or touch any file outside the hosts' work/data dirs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from harness.hosts.base import Host, HostSet

REPO_ROOT = Path(__file__).resolve().parents[1]
DAEMON = "machi"
WHEEL_CACHE = REPO_ROOT / "build" / "harness-wheels"
_SOURCE_DIRS = ("machi", "harness")
_SOURCE_FILES = ("pyproject.toml", "README.md")
CANARIES = ("read-non-tail", "ack-before-tail", "epoch-reuse", "skip-repair", "ack-before-sync")
#: canaries implemented so far (the others are refused with a clear message)
CANARIES_IMPLEMENTED = CANARIES
#: canaries that are daemon switches (node config key ``test_canary``, TEST ONLY); the
#: others are client-side (``harness.canary``)
DAEMON_CANARIES = ("epoch-reuse", "skip-repair", "ack-before-sync")
STABLE_TIMEOUT_S_DEFAULT = 60.0
#: AP final phase: how long to wait for an anti-entropy pass that started after the chain
#: became stable (the daemon's default period is 5 s, after 1 s of stability)
ANTI_ENTROPY_WAIT_S = 20.0


def tail_anti_entropy(status: Mapping[str, dict[str, Any] | str]
                      ) -> tuple[str | None, dict[str, Any] | None]:
    """(the UPI tail, its chain status's ``anti_entropy`` object) from a status map, or
    None where a node does not say (no UPI, or a daemon without AP anti-entropy)."""
    s0 = next((s for s in status.values() if isinstance(s, dict) and s.get("upi")), None)
    if s0 is None:
        return None, None
    tail = s0["upi"][-1]
    ts = status.get(tail)
    ae = ts.get("anti_entropy") if isinstance(ts, dict) else None
    return tail, ae if isinstance(ae, dict) else None


def anti_entropy_since(base: tuple[str, int], tail: str | None,
                       ae: Mapping[str, Any] | None) -> bool:
    """Whether the tail has finished two anti-entropy passes that started after ``base``
    (the tail and its ``passes`` counter then): counters count started passes, so pass
    ``passes + 1`` is the first one started later.  Two: a pass leaves entries younger
    than one period (past the EOFs of the listing before it) to the next one."""
    if tail != base[0] or ae is None:
        return False
    n = int(ae.get("passes", 0))
    return (n >= base[1] + 2 and not ae.get("running")) or n >= base[1] + 3


class DeployError(Exception):
    """Deployment failed; the message says where and why."""


# ---------------------------------------------------------------------------------------
# Wheel


def source_hash(root: Path = REPO_ROOT) -> str:
    """Hash of everything that goes into the wheel (python sources + project files)."""
    h = hashlib.sha256()
    files: list[Path] = []
    for d in _SOURCE_DIRS:
        files.extend(p for p in (root / d).rglob("*.py") if "__pycache__" not in p.parts)
    files.extend(root / f for f in _SOURCE_FILES if (root / f).exists())
    for p in sorted(files):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def build_wheel(root: Path = REPO_ROOT, cache: Path = WHEEL_CACHE, *,
                use_pip: bool = False) -> tuple[Path, str]:
    """A wheel of the checkout at `root` (cached by source hash): (path, hash).

    By default the wheel is assembled here from the sources and `pyproject.toml` (a pure
    Python py3-none-any wheel: the packages, METADATA, entry points, RECORD) -- under a
    second, where `pip wheel` takes 10-50 s on a loaded 2-core machine; `use_pip` (or
    $MACHI_HARNESS_PIP_WHEEL=1) runs `pip wheel --no-deps` instead."""
    digest = source_hash(root)
    out = cache / digest
    found = sorted(out.glob("*.whl")) if out.exists() else []
    if found:
        return found[0], digest
    tmp = cache / f"{digest}.tmp{os.getpid()}"
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    tmp.mkdir(parents=True)
    if use_pip or os.environ.get("MACHI_HARNESS_PIP_WHEEL") == "1":
        _pip_wheel(root, tmp)
    else:
        _assemble_wheel(root, tmp)
    wheels = sorted(tmp.glob("*.whl"))
    if not wheels:
        raise DeployError(f"no wheel was built in {tmp}")
    try:
        tmp.rename(out)
    except OSError:  # another run built the same hash meanwhile
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
        return sorted(out.glob("*.whl"))[0], digest
    return out / wheels[0].name, digest


def _pip_wheel(root: Path, dest: Path) -> None:
    base = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(root)]
    p = subprocess.run([*base[:5], "--no-build-isolation", *base[5:]], capture_output=True,
                       text=True)
    if p.returncode != 0:  # no `wheel` in this venv: let pip fetch the build backend
        p = subprocess.run(base, capture_output=True, text=True)
    if p.returncode != 0:
        raise DeployError(f"pip wheel failed (exit {p.returncode}): {p.stderr[-2000:]}")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
        b"=").decode()


def _assemble_wheel(root: Path, dest: Path) -> None:
    proj = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    name, version = proj["name"], proj["version"]
    dist = f"{name.replace('-', '_')}-{version}"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
            f"Summary: {proj.get('description', '')}",
            f"Requires-Python: {proj.get('requires-python', '>=3.11')}"]
    meta += [f"Requires-Dist: {d}" for d in proj.get("dependencies", [])]
    files: dict[str, bytes] = {}
    for d in _SOURCE_DIRS:
        for p in sorted((root / d).rglob("*.py")):
            if "__pycache__" not in p.parts:
                files[str(p.relative_to(root))] = p.read_bytes()
    info = f"{dist}.dist-info"
    files[f"{info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: machi-harness\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    scripts = proj.get("scripts", {})
    files[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
        f"{k} = {v}\n" for k, v in scripts.items())).encode()
    record = "".join(f"{n},{_record_hash(b)},{len(b)}\n" for n, b in files.items())
    record += f"{info}/RECORD,,\n"
    path = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in files.items():
            z.writestr(zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0)), b)
        z.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0)), record)


def install(host: Host, wheel: Path, digest: str, *, python: str, deps: bool = False) -> str:
    """Upload and install the wheel on `host` into `<work_dir>/lib-<digest>` (reused when
    the stored hash matches); returns that directory."""
    w = host.spec.work_dir
    lib = f"{w}/lib-{digest}"
    marker = f"{lib}/.machi-wheel-hash"
    have = host.run(f"cat {shlex.quote(marker)} 2>/dev/null || true").stdout.strip()
    if have == digest:
        return lib
    remote_dir = f"{w}/wheels/{digest}"
    remote = f"{remote_dir}/{wheel.name}"
    host.run(f"mkdir -p {shlex.quote(remote_dir)}")
    host.upload(wheel, remote)
    dep_flag = "" if deps else "--no-deps --no-index"
    script = (
        f"set -e; rm -rf {shlex.quote(lib)}.tmp; "
        f"{shlex.quote(python)} -m pip install -q --no-compile --disable-pip-version-check "
        f"{dep_flag} "
        f"--target {shlex.quote(lib)}.tmp {shlex.quote(remote)}; "
        f"echo {digest} > {shlex.quote(lib)}.tmp/.machi-wheel-hash; "
        f"rm -rf {shlex.quote(lib)}; mv {shlex.quote(lib)}.tmp {shlex.quote(lib)}"
    )
    host.run(script, timeout_s=300)
    # the daemons must run the uploaded code, not something else on the host's path
    where = host.run(f"cd {shlex.quote(w)} && PYTHONPATH={shlex.quote(lib)} "
                     f"{shlex.quote(python)} -c 'import machi; print(machi.__file__)'")
    if not where.stdout.strip().startswith(lib + "/"):
        raise DeployError(f"{host.name}: machi imports from {where.stdout.strip()}, not {lib}")
    return lib


# ---------------------------------------------------------------------------------------
# Cluster


@dataclass
class DeployOptions:
    """What to deploy and how the chain looks."""

    mode: str = "cp"
    witnesses: int = 0
    chain: str = "c1"
    port: int = 4000
    metrics_port: int = 9100
    python: str = sys.executable
    deps: bool = False
    canary: str | None = None
    run_id: str = "run"
    stable_timeout_s: float = STABLE_TIMEOUT_S_DEFAULT
    config: dict[str, Any] = field(default_factory=dict)  # extra node config keys

    def __post_init__(self) -> None:
        if self.mode not in ("ap", "cp"):
            raise ValueError(f"mode must be ap or cp, got {self.mode!r}")
        if self.canary is not None and self.canary not in CANARIES_IMPLEMENTED:
            known = ", ".join(CANARIES_IMPLEMENTED)
            raise ValueError(f"canary {self.canary!r} is not implemented (have: {known})")


def _toml(values: Mapping[str, Any]) -> str:
    lines = []
    for k, v in values.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f"{k} = {json.dumps(str(v))}")
    return "\n".join(lines) + "\n"


@dataclass
class Deployment:
    """A deployed chain: hosts, member addresses, where each node keeps its files."""

    hosts: HostSet
    opts: DeployOptions
    lib: dict[str, str] = field(default_factory=dict)
    data_dirs: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    setup_s: dict[str, float] = field(default_factory=dict)

    @property
    def nodes(self) -> list[str]:
        return self.hosts.names

    @property
    def witnesses(self) -> list[str]:
        return self.nodes[len(self.nodes) - self.opts.witnesses:] if self.opts.witnesses else []

    def members(self) -> dict[str, tuple[str, int]]:
        return {h.name: (h.spec.peer_address, self.opts.port) for h in self.hosts}

    def members_meta(self) -> dict[str, str]:
        return {n: f"{a}:{p}" for n, (a, p) in self.members().items()}

    # ---- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        t0 = time.monotonic()
        wheel, digest = build_wheel()
        t1 = time.monotonic()
        self.lib = self.hosts.map(
            lambda h: install(h, wheel, digest, python=self.opts.python, deps=self.opts.deps))
        t2 = time.monotonic()
        self.hosts.map(self._start_node)
        t3 = time.monotonic()
        anyio.run(self._bootstrap)
        t4 = time.monotonic()
        self.setup_s = {"wheel": round(t1 - t0, 3), "install": round(t2 - t1, 3),
                        "start": round(t3 - t2, 3), "bootstrap_stable": round(t4 - t3, 3)}

    def _start_node(self, h: Host) -> int:
        o = self.opts
        data = f"{h.spec.data_dir}/{o.run_id}"
        conf_path = f"{h.spec.work_dir}/{o.run_id}/{h.name}.toml"
        log = f"{h.spec.work_dir}/{o.run_id}/{h.name}.log"
        values: dict[str, Any] = {
            "name": h.name, "listen": f"{h.spec.peer_address}:{o.port}", "data_dir": data,
            "metrics": f"{h.spec.peer_address}:{o.metrics_port}",
            "witness": h.name in self.witnesses, **o.config,
        }
        if o.canary in DAEMON_CANARIES:
            values["test_canary"] = o.canary
        h.run(f"mkdir -p {shlex.quote(data)} {shlex.quote(str(Path(conf_path).parent))}")
        h.write_text(conf_path, _toml(values))
        self.data_dirs[h.name] = data
        self.logs[h.name] = log
        env = {"PYTHONPATH": self.lib[h.name]}
        if o.canary:
            env["MACHI_TEST_CANARY"] = o.canary
        h.stop_daemon(DAEMON)  # a leftover of an earlier run on a reused cluster
        return h.start_daemon(DAEMON, [o.python, "-m", "machi", "node", "run", "--config",
                                       conf_path], log_path=log, env=env)

    async def _admin(self, node: str, op: Any, meta: dict[str, Any],
                     timeout_ms: int = 5_000) -> dict[str, Any]:
        from machi.client.flu_client import FluClient

        host, port = self.members()[node]
        async with FluClient(host, port, timeout_ms=timeout_ms, connect_timeout_ms=timeout_ms,
                             name="harness-admin") as c:
            return await c.chain_admin(op, meta)

    async def _bootstrap(self) -> None:
        from machi.core.wire import Op

        meta = {"chain": self.opts.chain, "mode": self.opts.mode,
                "members": self.members_meta(), "witnesses": self.witnesses}
        deadline = time.monotonic() + self.opts.stable_timeout_s
        pending = list(self.nodes)
        last_err = ""
        while pending:  # daemons may still be opening their stores
            for n in list(pending):
                try:
                    await self._admin(n, Op.CHAIN_BOOTSTRAP, {**meta, "propose": False})
                    pending.remove(n)
                except Exception as e:  # retried until the deadline
                    last_err = f"{n}: {e!r}"
            if pending:
                if time.monotonic() > deadline:
                    raise DeployError(f"bootstrap: nodes {pending} did not answer: {last_err}")
                await anyio.sleep(0.2)
        await self._admin(self.nodes[0], Op.CHAIN_BOOTSTRAP, {**meta, "propose": True})
        await self.wait_stable(deadline)

    async def status_all(self) -> dict[str, dict[str, Any] | str]:
        from machi.core.wire import Op

        out: dict[str, dict[str, Any] | str] = {}

        async def one(n: str) -> None:
            try:
                out[n] = await self._admin(n, Op.CHAIN_STATUS, {}, timeout_ms=2_000)
            except Exception as e:  # a node that does not answer is reported
                out[n] = repr(e)

        async with anyio.create_task_group() as tg:
            for n in self.nodes:
                tg.start_soon(one, n)
        return out

    @staticmethod
    def stable(status: Mapping[str, dict[str, Any] | str], nodes: Sequence[str],
               witnesses: Sequence[str]) -> bool:
        """Every node answers with one epoch id, confirmed, full UPI, nothing repairing."""
        sts = [status.get(n) for n in nodes]
        if not all(isinstance(s, dict) and s.get("epoch") for s in sts):
            return False
        ids = {(s["epoch"], s["epoch_csum"]) for s in sts if isinstance(s, dict)}
        s0 = sts[0]
        assert isinstance(s0, dict)
        want = sorted(n for n in nodes if n not in witnesses)
        upi = sorted(n for n in s0["upi"] if n not in witnesses)  # CP: witnesses lead the UPI
        return (len(ids) == 1 and upi == want and not s0["repairing"]
                and all(isinstance(s, dict) and s.get("confirmed") for s in sts))

    async def wait_stable(self, deadline: float) -> dict[str, Any]:
        """Poll CHAIN_STATUS until stable; DeployError with the last status otherwise."""
        last: dict[str, Any] = {}
        while True:
            last = await self.status_all()
            if self.stable(last, self.nodes, self.witnesses):
                return last
            if time.monotonic() > deadline:
                raise DeployError(f"chain not stable in time: {json.dumps(last)[:3000]}")
            await anyio.sleep(0.3)

    async def wait_anti_entropy(self, status: Mapping[str, dict[str, Any] | str],
                                deadline: float) -> dict[str, Any]:
        """AP final phase: wait (until ``deadline``) for the UPI tail to finish two
        anti-entropy passes that started after ``status`` was taken, so that chunks an
        append left on some replicas only (its reply lost, no epoch change) are merged
        before the replicas are compared (docs/repair.md, "AP anti-entropy").  A new tail
        counts from when it is seen.  Returns what happened (for final.json)."""
        t0 = time.monotonic()
        tail, ae = tail_anti_entropy(status)
        if tail is None or ae is None:
            return {"waited": False, "reason": "the tail reports no anti_entropy"}
        base = (tail, int(ae.get("passes", 0)))
        while time.monotonic() < deadline:
            await anyio.sleep(0.3)
            st = await self.status_all()
            t, a = tail_anti_entropy(st)
            if t is not None and t != base[0] and a is not None:
                base = (t, int(a.get("passes", 0)))
                continue
            if anti_entropy_since(base, t, a):
                assert a is not None
                return {"waited": True, "seconds": round(time.monotonic() - t0, 3),
                        "tail": t, "status": a.get("status"), "last": a.get("last")}
        return {"waited": False, "seconds": round(time.monotonic() - t0, 3),
                "reason": "no anti-entropy pass finished in time", "tail": base[0]}

    def data_files(self, node: str) -> list[str]:
        """Data files of a node (torn-write targets)."""
        d = shlex.quote(self.data_dirs[node] + "/data")
        res = self.hosts[node].run(f"find {d} -type f -size +0 | sort | tail -n 3", check=False)
        return [ln for ln in res.stdout.splitlines() if ln.strip()]

    # ---- teardown ------------------------------------------------------------------------
    def teardown(self, store: Path, *, leave_running: bool = False) -> dict[str, Any]:
        """Stop daemons (unless `leave_running`), download logs, metrics, projection logs."""
        def one(h: Host) -> dict[str, Any]:
            n = h.name
            dest = store / "nodes" / n
            dest.mkdir(parents=True, exist_ok=True)
            got: dict[str, Any] = {}
            metrics = h.run(
                f"{shlex.quote(self.opts.python)} -c " + shlex.quote(
                    "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                    f"'http://{h.spec.peer_address}:{self.opts.metrics_port}/metrics',"
                    "timeout=3).read().decode())"), check=False, timeout_s=15)
            if metrics.ok:
                (dest / "metrics.txt").write_text(metrics.stdout)
                got["metrics"] = True
            if not leave_running:
                got["stopped"] = h.stop_daemon(DAEMON)
            for remote, local in ((self.logs.get(n), "node.log"),
                                  (f"{self.data_dirs.get(n)}/projection-log.jsonl",
                                   "projection-log.jsonl")):
                if not remote:
                    continue
                try:
                    h.download(remote, dest / local)
                    got[local] = True
                except Exception as e:  # a missing file is reported
                    got[local] = repr(e)
            return got

        return self.hosts.map(one, check=False)
