"""The projection record (reference section 3): fields, invariants, canonical encoding and
the blake3 epoch checksum.

Owns: the record type, its validation, its canonical bytes and checksum, and the full
JSON form used on disk and on the wire.  Must not: decide anything about chains (that is
``machi.core.chain_manager`` and ``machi.core.transition``) or touch storage.

Canonical encoding (the checksum input), part of the wire spec (docs/protocol.md):
  UTF-8 JSON of the record with ``epoch_csum``, ``creation_time_ms`` and ``dbg2`` left out,
  object keys sorted, no insignificant whitespace, integers only (floats are rejected),
  byte strings as lowercase hex, lists in record order.  ``down`` is a set and is stored
  sorted.  checksum = blake3(b"machi-py projection v1\\n" + canonical bytes).
So the same record gives the same bytes and the same checksum whatever order its fields
or dictionary keys were given in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import blake3

from .epoch import EPOCH_CSUM_SIZE, MAX_EPOCH, EpochId

Mode = Literal["ap", "cp"]
MODES: tuple[Mode, ...] = ("ap", "cp")

MAX_CHAIN_LENGTH = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_CSUM_DOMAIN = b"machi-py projection v1\n"

JSON = Any  # a JSON value without floats (checked at run time)


def valid_name(name: object) -> bool:
    """Server and chain names: 1-64 chars of [A-Za-z0-9_.-], not starting with '.' or '-'."""
    return isinstance(name, str) and _NAME_RE.match(name) is not None


def _check_json(value: object, where: str, *, allow_float: bool = False) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if allow_float:
            return
        raise ValueError(f"{where}: floats are not canonical; use integers")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]", allow_float=allow_float)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: object keys must be strings")
            _check_json(v, f"{where}.{k}", allow_float=allow_float)
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def _freeze(value: JSON) -> JSON:
    """Deep copy into plain dict/list so nobody can alter a projection behind our back."""
    if isinstance(value, Mapping):
        return {k: _freeze(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_freeze(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """How to reach one member (the original's ``p_srvr``)."""

    name: str
    address: str
    port: int
    props: Mapping[str, JSON] = field(default_factory=dict)

    def to_json(self) -> dict[str, JSON]:
        return {"address": self.address, "port": self.port, "props": _freeze(self.props)}

    @classmethod
    def from_json(cls, name: str, d: Mapping[str, JSON]) -> MemberSpec:
        if not isinstance(d, Mapping):
            raise ValueError(f"members_dict.{name}: want an object")
        unknown = set(d) - {"address", "port", "props"}
        if unknown:
            raise ValueError(f"members_dict.{name}: unknown keys {sorted(unknown)}")
        spec = cls(name, d.get("address", ""), d.get("port", 0), _freeze(d.get("props", {})))
        spec.validate()
        return spec

    def validate(self) -> None:
        if not valid_name(self.name):
            raise ValueError(f"bad member name {self.name!r}")
        if not isinstance(self.address, str) or not self.address or len(self.address) > 255:
            raise ValueError(f"member {self.name}: bad address {self.address!r}")
        if (
            not isinstance(self.port, int)
            or isinstance(self.port, bool)
            or not 0 <= self.port <= 65535
        ):
            raise ValueError(f"member {self.name}: bad port {self.port!r}")
        _check_json(self.props, f"members_dict.{self.name}.props")


@dataclass(frozen=True, slots=True, eq=False)
class Projection:
    """One projection (``projection_v1``).  Build with :func:`make_projection`.

    Two projections are equal iff their epoch ids are equal (``compare`` in the original):
    the checksum covers every field except ``creation_time_ms`` and ``dbg2``.
    """

    epoch_number: int
    epoch_csum: bytes
    author_server: str
    chain_name: str
    all_members: tuple[str, ...]
    witnesses: tuple[str, ...]
    creation_time_ms: int
    mode: Mode
    upi: tuple[str, ...]
    repairing: tuple[str, ...]
    down: tuple[str, ...]
    dbg: Mapping[str, JSON]
    dbg2: Mapping[str, JSON]
    members_dict: Mapping[str, MemberSpec]

    # ---- identity -------------------------------------------------------------------
    @property
    def epoch_id(self) -> EpochId:
        return EpochId(self.epoch_number, self.epoch_csum)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Projection):
            return NotImplemented
        return self.epoch_id == other.epoch_id

    def __hash__(self) -> int:
        return hash(self.epoch_id)

    # ---- derived views ----------------------------------------------------------------
    @property
    def non_witnesses(self) -> tuple[str, ...]:
        return tuple(m for m in self.all_members if m not in self.witnesses)

    @property
    def upi_non_witnesses(self) -> tuple[str, ...]:
        return tuple(m for m in self.upi if m not in self.witnesses)

    @property
    def mutation_chain(self) -> tuple[str, ...]:
        """Where data goes: UPI ++ repairing, witnesses left out."""
        return tuple(m for m in self.upi + self.repairing if m not in self.witnesses)

    @property
    def head(self) -> str | None:
        chain = self.mutation_chain
        return chain[0] if chain else None

    @property
    def tail(self) -> str | None:
        """The UPI tail (last non-witness of the UPI): where strongly consistent reads go."""
        upi = self.upi_non_witnesses
        return upi[-1] if upi else None

    def is_none(self) -> bool:
        """The "none" projection: nobody serving."""
        return not self.upi and not self.repairing

    # ---- encodings ----------------------------------------------------------------------
    def checksummed_dict(self) -> dict[str, JSON]:
        return {
            "epoch_number": self.epoch_number,
            "author_server": self.author_server,
            "chain_name": self.chain_name,
            "all_members": list(self.all_members),
            "witnesses": list(self.witnesses),
            "mode": self.mode,
            "upi": list(self.upi),
            "repairing": list(self.repairing),
            "down": list(self.down),
            "dbg": _freeze(self.dbg),
            "members_dict": {n: s.to_json() for n, s in self.members_dict.items()},
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.checksummed_dict())

    def compute_csum(self) -> bytes:
        return blake3.blake3(_CSUM_DOMAIN + self.canonical_bytes()).digest()

    def csum_is_valid(self) -> bool:
        return self.compute_csum() == self.epoch_csum

    def to_json(self) -> dict[str, JSON]:
        """Full form (disk and wire): the checksummed fields plus the excluded ones."""
        d = self.checksummed_dict()
        d["epoch_csum"] = self.epoch_csum.hex()
        d["creation_time_ms"] = self.creation_time_ms
        d["dbg2"] = _freeze(self.dbg2)
        return d

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json(), allow_float=True)

    # ---- changes ----------------------------------------------------------------------
    def evolve(self, **changes: Any) -> Projection:
        """A validated copy with ``changes`` applied and the checksum recomputed."""
        return _finish(replace(self, **changes))

    def with_dbg2(self, dbg2: Mapping[str, JSON]) -> Projection:
        """Same epoch id, different ``dbg2`` (the confirmation annotation)."""
        _check_json(dbg2, "dbg2", allow_float=True)
        return replace(self, dbg2=_freeze(dbg2))

    def summary(self) -> str:
        return (
            f"epoch={self.epoch_id.short()} author={self.author_server} mode={self.mode} "
            f"upi={list(self.upi)} repairing={list(self.repairing)} down={list(self.down)}"
        )


def canonical_json(value: JSON, *, allow_float: bool = False) -> bytes:
    _check_json(value, "value", allow_float=allow_float)
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"{what}: want a list of names, got a string")
    out = tuple(values)
    for n in out:
        if not valid_name(n):
            raise ValueError(f"{what}: bad server name {n!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: duplicate names in {list(out)}")
    return out


def validate(p: Projection) -> None:
    """Check every structural invariant of section 3.1; raises ``ValueError``."""
    if not isinstance(p.epoch_number, int) or not 0 <= p.epoch_number <= MAX_EPOCH:
        raise ValueError(f"bad epoch number {p.epoch_number!r}")
    if p.mode not in MODES:
        raise ValueError(f"bad mode {p.mode!r}: want 'ap' or 'cp'")
    if not valid_name(p.chain_name):
        raise ValueError(f"bad chain name {p.chain_name!r}")
    members = set(p.all_members)
    if len(p.all_members) > MAX_CHAIN_LENGTH:
        raise ValueError(f"more than {MAX_CHAIN_LENGTH} members")
    if p.all_members and p.author_server not in members:
        raise ValueError(f"author {p.author_server!r} is not a member")
    if not valid_name(p.author_server):
        raise ValueError(f"bad author {p.author_server!r}")
    for what, lst in (
        ("witnesses", p.witnesses), ("upi", p.upi), ("repairing", p.repairing), ("down", p.down)
    ):
        stray = [n for n in lst if n not in members]
        if stray:
            raise ValueError(f"{what} names non-members {stray}")
    if p.witnesses and p.mode != "cp":
        raise ValueError("witnesses are only allowed in cp mode")
    u, r, d = set(p.upi), set(p.repairing), set(p.down)
    if u & r or u & d or r & d:
        raise ValueError("upi, repairing and down must be pairwise disjoint")
    if set(p.members_dict) - members:
        raise ValueError(f"members_dict names non-members {sorted(set(p.members_dict) - members)}")
    for name, spec in p.members_dict.items():
        if spec.name != name:
            raise ValueError(f"members_dict key {name!r} holds spec for {spec.name!r}")
        spec.validate()
    _check_json(p.dbg, "dbg")
    _check_json(p.dbg2, "dbg2", allow_float=True)
    if not isinstance(p.creation_time_ms, int) or p.creation_time_ms < 0:
        raise ValueError("creation_time_ms must be a non-negative integer")
    if len(p.epoch_csum) != EPOCH_CSUM_SIZE:
        raise ValueError("bad epoch checksum length")


def _finish(p: Projection) -> Projection:
    p = replace(
        p,
        all_members=_names(p.all_members, "all_members"),
        witnesses=_names(p.witnesses, "witnesses"),
        upi=_names(p.upi, "upi"),
        repairing=_names(p.repairing, "repairing"),
        down=tuple(sorted(_names(p.down, "down"))),
        dbg=_freeze(p.dbg),
        dbg2=_freeze(p.dbg2),
        members_dict=dict(p.members_dict),
        epoch_csum=bytes(EPOCH_CSUM_SIZE),
    )
    validate(p)
    return replace(p, epoch_csum=p.compute_csum())


def make_projection(
    *,
    epoch_number: int,
    author_server: str,
    chain_name: str,
    all_members: Iterable[str],
    mode: Mode = "ap",
    upi: Iterable[str] = (),
    repairing: Iterable[str] = (),
    down: Iterable[str] = (),
    witnesses: Iterable[str] = (),
    members_dict: Mapping[str, MemberSpec] | None = None,
    dbg: Mapping[str, JSON] | None = None,
    dbg2: Mapping[str, JSON] | None = None,
    creation_time_ms: int = 0,
) -> Projection:
    """Build and validate a projection and compute its checksum."""
    return _finish(
        Projection(
            epoch_number=epoch_number,
            epoch_csum=bytes(EPOCH_CSUM_SIZE),
            author_server=author_server,
            chain_name=chain_name,
            all_members=tuple(all_members),
            witnesses=tuple(witnesses),
            creation_time_ms=creation_time_ms,
            mode=mode,
            upi=tuple(upi),
            repairing=tuple(repairing),
            down=tuple(down),
            dbg=dict(dbg or {}),
            dbg2=dict(dbg2 or {}),
            members_dict=dict(members_dict or {}),
        )
    )


_KEYS = frozenset(
    {
        "epoch_number", "epoch_csum", "author_server", "chain_name", "all_members",
        "witnesses", "creation_time_ms", "mode", "upi", "repairing", "down", "dbg", "dbg2",
        "members_dict",
    }
)


def projection_from_json(d: Mapping[str, JSON], *, verify_csum: bool = True) -> Projection:
    """Parse the full JSON form; raises ``ValueError`` on anything malformed.

    With ``verify_csum`` (the default) a stored checksum that does not match the
    recomputed one is an error (the store answers ``BAD_ARG``).
    """
    if not isinstance(d, Mapping):
        raise ValueError("projection: want a JSON object")
    missing = _KEYS - set(d)
    unknown = set(d) - _KEYS
    if missing:
        raise ValueError(f"projection: missing fields {sorted(missing)}")
    if unknown:
        raise ValueError(f"projection: unknown fields {sorted(unknown)}")
    md = d["members_dict"]
    if not isinstance(md, Mapping):
        raise ValueError("projection: members_dict must be an object")
    for key in ("dbg", "dbg2"):
        if not isinstance(d[key], Mapping):
            raise ValueError(f"projection: {key} must be an object")
    try:
        stored_csum = bytes.fromhex(d["epoch_csum"])
    except (TypeError, ValueError):
        raise ValueError("projection: epoch_csum must be hex") from None
    for key in ("epoch_number", "creation_time_ms"):
        if not isinstance(d[key], int) or isinstance(d[key], bool):
            raise ValueError(f"projection: {key} must be an integer")
    p = make_projection(
        epoch_number=d["epoch_number"],
        author_server=d["author_server"],
        chain_name=d["chain_name"],
        all_members=d["all_members"],
        mode=d["mode"],
        upi=d["upi"],
        repairing=d["repairing"],
        down=d["down"],
        witnesses=d["witnesses"],
        members_dict={n: MemberSpec.from_json(n, s) for n, s in md.items()},
        dbg=d["dbg"],
        dbg2=d["dbg2"],
        creation_time_ms=d["creation_time_ms"],
    )
    if verify_csum and stored_csum != p.epoch_csum:
        raise ValueError(
            f"projection epoch {p.epoch_number}: stored checksum {stored_csum.hex()[:16]}... "
            f"does not match computed {p.epoch_csum.hex()[:16]}..."
        )
    return p


def projection_from_bytes(raw: bytes, *, verify_csum: bool = True) -> Projection:
    try:
        d = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"projection: not JSON ({exc})") from None
    return projection_from_json(d, verify_csum=verify_csum)
