"""In-memory FLU for the simulator: projection store, wedge state, write-once chunks.

Owns the same semantics as the real FLU, in memory: public projections are write-once,
a private slot may be rewritten only with the same epoch id (dbg2 updates), wedge state
follows machi.core.wedge, data operations are epoch-checked and write-once, witnesses
refuse data.  Must not: know about the network or the chain manager (the cluster
applies messages to it).  A crash loses nothing stored here; restart re-derives the
wedge state from the stores (CP restarts wedged).
"""

from __future__ import annotations

from machi.core import wedge
from machi.core.chain_manager import MemberView
from machi.core.epoch import EpochId
from machi.core.fitness import Report
from machi.core.projection import Projection
from machi.core.status import Status
from machi.core.wedge import Kind


class SimFlu:
    def __init__(self, name: str, *, witness: bool = False) -> None:
        self.name = name
        self.witness = witness
        self.public: dict[int, Projection] = {}
        self.private: dict[int, Projection] = {}
        self.chunks: dict[str, dict[int, bytes]] = {}
        #: AP anti-entropy change marks, as the real store keeps them: the live change
        #: tokens (at most 4) and per file, per token, the lowest changed offset since
        self.tokens: list[int] = []
        self.lows: dict[str, dict[int, int]] = {}
        self._token_seq = 0
        self.fitness: dict[str, Report] = {}
        #: birth time of each report on the owning node's clock (PublishFitness)
        self.fitness_born_ms: dict[str, int] = {}
        self.state = wedge.initial_state(None)
        #: AP: restarted inside its UPI, waiting for a new epoch (its manager's state)
        self.restarted = False
        self._seq = 0

    # ---- projection store -------------------------------------------------------------
    def latest(self, kind: Kind) -> Projection | None:
        d = self.public if kind == "public" else self.private
        return d[max(d)] if d else None

    def write_projection(self, kind: Kind, p: Projection) -> Status:
        if not p.csum_is_valid():
            return Status.BAD_ARG
        d = self.public if kind == "public" else self.private
        old = d.get(p.epoch_number)
        if old is not None and (kind == "public" or old.epoch_id != p.epoch_id):
            return Status.WRITTEN
        d[p.epoch_number] = p
        self.state = wedge.after_projection_write(self.state, kind, p)
        return Status.OK

    def confirmed_private(self) -> Projection | None:
        for e in sorted(self.private, reverse=True):
            if self.private[e].dbg2.get("confirmed"):
                return self.private[e]
        return None

    def view(self, *, want_confirmed: bool, now_ms: int = 0) -> MemberView:
        """What a CHAIN_VIEW read answers; ``now_ms`` is this node's clock (report ages)."""
        return MemberView(
            public=self.latest("public"), private=self.latest("private"),
            private_confirmed=self.confirmed_private() if want_confirmed else None,
            fitness=dict(self.fitness), wedged=self.state.wedged, restarted=self.restarted,
            fitness_age_ms={o: max(0, now_ms - self.fitness_born_ms.get(o, now_ms))
                            for o in self.fitness},
        )

    def restart(self) -> None:
        pub = self.latest("public")
        self.state = wedge.initial_state(self.latest("private"),
                                         pub.epoch_number if pub else 0)

    def set_wedge(self, wedged: bool, epoch_id: EpochId) -> None:
        if wedged:
            self.state = wedge.wedge(self.state)
        else:
            cur = self.latest("private")
            if cur is not None and not cur.is_none():
                self.state = wedge.after_confirm(self.state, epoch_id)

    # ---- data -------------------------------------------------------------------------
    def _check(self, epoch_id: EpochId) -> Status:
        self.state, st = wedge.check_epoch(self.state, epoch_id)
        if st == Status.OK and self.witness:
            return Status.BAD_ARG
        return st

    def append(self, epoch_id: EpochId, prefix: str, data: bytes) -> tuple[Status, str, int]:
        st = self._check(epoch_id)
        if st != Status.OK:
            return st, "", 0
        fname = f"{prefix}^{self.name}^{epoch_id.number}"
        f = self.chunks.setdefault(fname, {})
        offset = max((o + len(b) for o, b in f.items()), default=1024)
        f[offset] = data
        self.changed(fname, offset)
        return Status.OK, fname, offset

    def write(self, epoch_id: EpochId, fname: str, offset: int, data: bytes) -> Status:
        st = self._check(epoch_id)
        if st != Status.OK:
            return st
        f = self.chunks.setdefault(fname, {})
        if offset in f:
            return Status.WRITTEN
        f[offset] = data
        self.changed(fname, offset)
        return Status.OK

    def changed(self, fname: str, offset: int) -> None:
        """``fname`` changed at ``offset`` (every writer of ``chunks`` calls this)."""
        lows = self.lows.setdefault(fname, {})
        for t in self.tokens:
            if offset < lows.get(t, offset + 1):
                lows[t] = offset

    def list_file_changes(self, since: int | None) -> tuple[int, dict[str, int | None]]:
        """The real FLU's list_files with ``changes``: a new token, and per file the
        lowest offset changed since token ``since`` (None: unchanged; 1024 when
        ``since`` is unknown)."""
        known = since is not None and since in self.tokens
        out: dict[str, int | None] = {}
        for f in sorted(self.chunks):
            out[f] = self.lows.get(f, {}).get(since) if known and since is not None else 1024
        self._token_seq += 1
        self.tokens = [*self.tokens, self._token_seq][-4:]
        return self._token_seq, out

    def read(self, epoch_id: EpochId, fname: str, offset: int) -> tuple[Status, bytes | None]:
        st = self._check(epoch_id)
        if st != Status.OK:
            return st, None
        got = self.chunks.get(fname, {}).get(offset)
        return (Status.NOT_WRITTEN, None) if got is None else (Status.OK, got)
