"""Tests of the pure repair planner: applied to a model of the replicas, AP plans give
every participant the union, CP plans make every repairing replica equal the tail, and
conflicts are always reported (never resolved)."""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from machi.core.checksum import CsumTag, TaggedCsum, digest, server_csum
from machi.core.projection import make_projection
from machi.core.repair_plan import (
    Copy,
    FilePlanner,
    Problem,
    Reset,
    Roles,
    Trim,
    plan_file,
    repair_roles,
)
from machi.sim.flu import SimFlu

B = 1024
SLOT = 100
NAMES = ("a", "b", "c", "d")


@dataclass(frozen=True)
class Ent:
    offset: int
    size: int
    csum: TaggedCsum | None
    corrupt: bool = False


def csum(*key: object) -> TaggedCsum:
    return TaggedCsum(CsumTag.SERVER, digest(repr(key).encode()))


@dataclass
class Replica:
    """A model replica of one file: written chunks and trimmed intervals."""

    written: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    trimmed: list[tuple[int, int]] = field(default_factory=list)

    def entries(self, merge_trims: bool) -> list[Ent]:
        out = [Ent(o, s, TaggedCsum(CsumTag.SERVER, d)) for o, (s, d) in self.written.items()]
        trims = union(self.trimmed) if merge_trims else self.trimmed
        out += [Ent(lo, hi - lo, None) for lo, hi in trims]
        return sorted(out, key=lambda e: e.offset)

    def norm(self) -> tuple[dict[int, tuple[int, bytes]], list[tuple[int, int]]]:
        return dict(self.written), union(self.trimmed)


def union(ivs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ivs):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


# slot state: None absent, "t" trimmed, 0 canonical, 1 other bytes, 2 other extent
SlotState = str | int | None


def build(states: dict[str, list[SlotState]]) -> dict[str, Replica]:
    reps: dict[str, Replica] = {}
    for m, slots in states.items():
        r = Replica()
        for i, s in enumerate(slots):
            off = B + SLOT * i
            if s == "t":
                r.trimmed.append((off, off + SLOT))
            elif s is not None:
                size = SLOT // 2 if s == 2 else SLOT
                r.written[off] = (size, csum(i, s).digest)
        reps[m] = r
    return reps


def expected_problem_slots(roles: Roles, states: dict[str, list[SlotState]]) -> set[int]:
    n = len(states[roles.source])
    bad: set[int] = set()
    for i in range(n):
        if roles.mode == "ap":
            col = [states[m][i] for m in roles.participants]
            if "t" not in col and len({s for s in col if s is not None}) > 1:
                bad.add(i)
            continue
        t = states[roles.source][i]
        for r in roles.repairing:
            s = states[r][i]
            if s == "t" and t != "t":
                bad.add(i)
            if t not in ("t", None) and s not in ("t", None) and s != t:
                bad.add(i)
    return bad


def apply(roles: Roles, reps: dict[str, Replica], plan: list[Copy | Reset | Trim]) -> None:
    """Apply a plan to the model, asserting every step is legal write-once behaviour."""
    for d in plan:
        if isinstance(d, Trim):
            lo, hi = d.offset, d.offset + d.size
            for m in d.members:
                r = reps[m]
                for o, (s, _) in list(r.written.items()):
                    if lo < o + s and o < hi:
                        assert lo <= o and o + s <= hi, "a trim may not split a chunk here"
                        del r.written[o]
                r.trimmed = union([*r.trimmed, (lo, hi)])
        elif isinstance(d, Reset):
            assert roles.mode == "cp"
            for m in d.members:
                assert m in roles.repairing
                assert reps[m].written.pop(d.offset)[0] == d.size
        else:
            src = reps[d.source].written[d.offset]
            assert src == (d.size, d.csum.digest)
            assert d.source not in d.destinations
            for m in d.destinations:
                r = reps[m]
                lo, hi = d.offset, d.offset + d.size
                assert not any(lo < o + s and o < hi for o, (s, _) in r.written.items())
                assert not any(lo < b and a < hi for a, b in r.trimmed)
                r.written[d.offset] = (d.size, d.csum.digest)


slot_state = st.sampled_from([None, None, 0, 0, 0, 1, 2, "t"])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Roles, dict[str, list[SlotState]], bool]:
    mode = draw(st.sampled_from(["ap", "cp"]))
    n = draw(st.integers(2, 4))
    names = NAMES[:n]
    k = draw(st.integers(1, n - 1))  # members repairing (the last k)
    upi, repairing = names[: n - k], names[n - k:]
    roles = Roles(mode, upi[-1], repairing, upi[:-1])
    slots = draw(st.integers(1, 6))
    clean = draw(st.booleans())
    states: dict[str, list[SlotState]] = {}
    for m in names:
        if clean:  # no conflicts possible: canonical, absent or trimmed (AP) only
            choices: list[SlotState] = [None, 0, 0] + (["t"] if mode == "ap" else [])
            states[m] = draw(st.lists(st.sampled_from(choices), min_size=slots,
                                      max_size=slots))
        else:
            states[m] = draw(st.lists(slot_state, min_size=slots, max_size=slots))
    return roles, states, draw(st.booleans())


@settings(max_examples=400)
@given(scenarios())
def test_plan_applied_to_a_model_converges_or_reports(
    sc: tuple[Roles, dict[str, list[SlotState]], bool],
) -> None:
    """AP: every participant ends with the union; CP: every repairing replica equals the
    tail; any conflicting slot is reported as a problem covering it and nothing runs."""
    roles, states, merge_trims = sc
    reps = build(states)
    before_tail = reps[roles.source].norm()
    out = list(plan_file("f", roles, {m: r.entries(merge_trims) for m, r in reps.items()}))
    problems = [x for x in out if isinstance(x, Problem)]
    want_bad = expected_problem_slots(roles, states)
    if want_bad:
        for i in want_bad:
            lo = B + SLOT * i
            assert any(p.offset <= lo < p.offset + max(p.size, 1) for p in problems), (i, out)
        return
    assert not problems, out
    plan = [x for x in out if not isinstance(x, Problem)]
    apply(roles, reps, plan)
    if roles.mode == "cp":
        assert reps[roles.source].norm() == before_tail
        for r in roles.repairing:
            assert reps[r].norm() == before_tail
    else:
        first = reps[roles.source].norm()
        for m in roles.participants:
            assert reps[m].norm() == first
        written, trimmed = first
        for slots in states.values():
            for i, s in enumerate(slots):
                off = B + SLOT * i
                if s == "t":
                    assert any(a <= off and off + SLOT <= b for a, b in trimmed)
                elif s is not None and not any(a <= off < b for a, b in trimmed):
                    assert off in written


@settings(max_examples=200)
@given(scenarios())
def test_plan_is_deterministic_and_idempotent(
    sc: tuple[Roles, dict[str, list[SlotState]], bool],
) -> None:
    """The same input gives the same plan, and planning again after applying a clean plan
    gives nothing to do."""
    roles, states, merge_trims = sc
    reps = build(states)
    inputs = {m: r.entries(merge_trims) for m, r in reps.items()}
    out = list(plan_file("f", roles, inputs))
    assert out == list(plan_file("f", roles, inputs))
    if any(isinstance(x, Problem) for x in out):
        return
    apply(roles, reps, [x for x in out if not isinstance(x, Problem)])
    again = list(plan_file("f", roles, {m: r.entries(True) for m, r in reps.items()}))
    assert again == []


@settings(max_examples=200)
@given(scenarios(), st.lists(st.integers(1, 4), min_size=1, max_size=8), st.randoms())
def test_push_planner_in_any_batches_equals_plan_file(
    sc: tuple[Roles, dict[str, list[SlotState]], bool], sizes: list[int], rnd: Random,
) -> None:
    """Feeding checksum lists in batches of any size, in the order the planner asks for
    them, gives exactly the plan of the one-entry-at-a-time ``plan_file``."""
    roles, states, merge_trims = sc
    inputs = {m: r.entries(merge_trims) for m, r in build(states).items()}
    want = list(plan_file("f", roles, inputs))
    planner = FilePlanner("f", roles)
    pos = dict.fromkeys(inputs, 0)
    got = []
    while (m := planner.needs()) is not None:
        n = rnd.choice(sizes)
        batch = inputs[m][pos[m]:pos[m] + n]
        pos[m] += n
        if batch:
            planner.feed(m, batch)
        else:
            planner.end(m)
        got += planner.take()
    got += planner.take()
    assert got == want


def test_ap_source_is_the_tail_when_it_has_the_chunk_else_the_first_owner() -> None:
    """AP copies come from the tail when it holds the chunk, else from the first owner in
    participant order (UPI before repairing)."""
    roles = Roles("ap", "b", ("c",), ("a",))
    x, y = Ent(B, 10, csum(1)), Ent(B + 10, 10, csum(2))
    out = list(plan_file("f", roles, {"a": [x, y], "b": [x], "c": [y]}))
    assert out == [Copy("f", B, 10, x.csum, "b", ("c",), ("a",)),  # type: ignore[arg-type]
                   Copy("f", B + 10, 10, y.csum, "a", ("b",), ("c",))]  # type: ignore[arg-type]


def test_cp_resets_unacknowledged_bytes_and_copies_the_tails() -> None:
    """CP: a chunk only on the repairing replica is reset; the tail's chunks are copied
    (other UPI members are fallback sources: they hold every chunk the tail holds);
    other UPI members are not written (the UPI sync pass makes them agree first)."""
    roles = Roles("cp", "b", ("c",), ("a",))
    x, y = Ent(B, 10, csum(1)), Ent(B + 10, 5, csum(2))
    out = list(plan_file("f", roles, {"a": [], "b": [x], "c": [y]}))
    assert out == [Copy("f", B, 10, x.csum, "b", ("c",), ("a",)),  # type: ignore[arg-type]
                   Reset("f", B + 10, 5, ("c",))]


def test_known_corrupt_copies_are_rewritten_from_a_good_copy() -> None:
    """A copy its FLU flags corrupt (checksum list) gets the exact rewrite like a member
    without the chunk, from a good holder; with no good holder the copy is still planned
    (from a corrupt source) so that the executor finds no good bytes and reports it; in CP
    a repairing member's corrupt copy of a tail chunk is rewritten from the tail."""
    x = Ent(B, 10, csum(1))
    bad = Ent(B, 10, x.csum, corrupt=True)
    ap = Roles("ap", "b", ("c",), ("a",))
    assert list(plan_file("f", ap, {"a": [x], "b": [bad], "c": []})) == [
        Copy("f", B, 10, x.csum, "a", ("b", "c"), ("b",))]  # type: ignore[arg-type]
    assert list(plan_file("f", ap, {"a": [x], "b": [x], "c": [bad]})) == [
        Copy("f", B, 10, x.csum, "b", ("c",), ("a", "c"))]  # type: ignore[arg-type]
    assert list(plan_file("f", ap, {"a": [bad], "b": [bad], "c": []})) == [
        Copy("f", B, 10, x.csum, "b", ("a", "c"), ("a",))]  # type: ignore[arg-type]
    assert list(plan_file("f", ap, {"a": [x], "b": [x], "c": [x]})) == []
    cp = Roles("cp", "b", ("c",), ("a",))
    assert list(plan_file("f", cp, {"a": [x], "b": [x], "c": [bad]})) == [
        Copy("f", B, 10, x.csum, "b", ("c",), ("a",))]  # type: ignore[arg-type]
    assert list(plan_file("f", cp, {"a": [x], "b": [x], "c": [x]})) == []


def test_conflicts_name_file_offset_and_members() -> None:
    """Different checksums at one place and overlapping extents are problems whose text
    names the file, the offset and the members."""
    roles = Roles("ap", "a", ("b",))
    out = list(plan_file("f1", roles, {"a": [Ent(B, 10, csum(1))],
                                       "b": [Ent(B, 10, csum(2))]}))
    assert [str(p) for p in out] == [f"conflicting checksums at one place: f1 @{B}+10 on a,b"]
    out = list(plan_file("f1", roles, {"a": [Ent(B, 10, csum(1))],
                                       "b": [Ent(B + 5, 10, csum(2))]}))
    assert len(out) == 1 and isinstance(out[0], Problem)
    assert out[0].reason == "overlapping chunks of different extents"


def test_partial_trim_bad_stream_and_cluster_bound_are_problems() -> None:
    """A chunk partly trimmed elsewhere, an unsorted checksum list and an overlap cluster
    over the bound are reported, not planned around."""
    roles = Roles("ap", "a", ("b",))
    out = list(plan_file("f", roles, {"a": [Ent(B, 10, csum(1))], "b": [Ent(B + 5, 20, None)]}))
    assert any(isinstance(p, Problem) and "partly trimmed" in p.reason for p in out)
    out = list(plan_file("f", roles, {"a": [Ent(B + 10, 1, csum(1)), Ent(B, 1, csum(2))],
                                      "b": []}))
    assert any(isinstance(p, Problem) and p.members == ("a",) and "sorted" in p.reason
               for p in out)
    big = [Ent(B + i, 1, csum(i)) for i in range(5)]
    out = list(plan_file("f", roles, {"a": [Ent(B, 5, csum(9))], "b": big},
                         max_cluster_entries=3))
    assert [p.reason for p in out if isinstance(p, Problem)] == [
        "too many overlapping entries to plan"]


def test_roles_from_a_projection_leave_out_witnesses() -> None:
    """The source is the UPI tail; witnesses never take part; nothing repairing -> None."""
    p = make_projection(epoch_number=3, author_server="b", chain_name="c",
                        all_members=("w", "a", "b", "c"), mode="cp", witnesses=("w",),
                        upi=("w", "a", "b"), repairing=("c",))
    roles = repair_roles(p)
    assert roles == Roles("cp", "b", ("c",), ("a",))
    assert roles.participants == ("b", "c")
    p2 = p.evolve(repairing=(), down=("c",))
    assert repair_roles(p2) is None


def test_planner_runs_over_the_simulators_in_memory_flus() -> None:
    """The planner works on the simulator's SimFlu chunk maps: CP planning and applying
    gives the repairing FLU exactly the tail's chunks (what the simulator's own repair
    does by copying), AP gives both the union."""
    def flus() -> dict[str, SimFlu]:
        b, c = SimFlu("b"), SimFlu("c")
        b.chunks = {"f1": {B: b"one", B + 3: b"two"}, "f2": {B: b"tail only"}}
        c.chunks = {"f1": {B: b"one", B + 9: b"unacked"}, "f3": {B: b"c only"}}
        return {"b": b, "c": c}

    def run(mode: str) -> dict[str, SimFlu]:
        fs = flus()
        roles = Roles(mode, "b", ("c",))  # type: ignore[arg-type]
        for file in sorted(set(fs["b"].chunks) | set(fs["c"].chunks)):
            inputs = {n: [Ent(o, len(d), server_csum(d))
                          for o, d in sorted(f.chunks.get(file, {}).items())]
                      for n, f in fs.items()}
            for x in plan_file(file, roles, inputs):
                assert isinstance(x, (Copy, Reset)), x
                if isinstance(x, Copy):
                    data = fs[x.source].chunks[file][x.offset]
                    for m in x.destinations:
                        fs[m].chunks.setdefault(file, {})[x.offset] = data
                else:
                    for m in x.members:
                        del fs[m].chunks[file][x.offset]
        return fs

    def nonempty(f: SimFlu) -> dict[str, dict[int, bytes]]:
        return {k: v for k, v in f.chunks.items() if v}

    cp = run("cp")
    assert nonempty(cp["c"]) == nonempty(cp["b"]) == flus()["b"].chunks
    ap = run("ap")
    assert ap["b"].chunks == ap["c"].chunks
    assert ap["c"].chunks["f1"] == {B: b"one", B + 3: b"two", B + 9: b"unacked"}
    assert set(ap["b"].chunks) == {"f1", "f2", "f3"}


def test_anti_entropy_roles_only_for_stable_ap_chains() -> None:
    from machi.core.repair_plan import anti_entropy_roles

    def p(upi: list[str], repairing: tuple[str, ...] = (), mode: str = "ap",
          witnesses: tuple[str, ...] = ()) -> Any:
        members = ["a", "b", "c"]
        return make_projection(
            epoch_number=4, author_server="a", chain_name="c1", all_members=members,
            mode=mode, upi=upi, repairing=list(repairing),  # type: ignore[arg-type]
            witnesses=list(witnesses),
            down=[m for m in members if m not in upi and m not in repairing])

    r = anti_entropy_roles(p(["a", "b", "c"]))
    assert r is not None and (r.mode, r.source, r.repairing, r.upi_others) == (
        "ap", "c", (), ("a", "b"))
    assert r.participants == ("c", "a", "b")
    assert anti_entropy_roles(p(["a", "b", "c"], mode="cp")) is None
    assert anti_entropy_roles(p(["a", "c"], ["b"])) is None
    assert anti_entropy_roles(p(["a", "c"])) is None


def test_change_memory_plans_changed_files_from_their_lowest_change() -> None:
    from machi.core.repair_plan import ChangeMemory, Listing

    mem = ChangeMemory()

    def lst(tok: int, **lows: dict[str, int | None]) -> dict[str, Listing]:
        return {m: Listing(mem.since(m), tok, v) for m, v in lows.items()}

    eofs = {"f": 20 * B, "g": 2 * B}
    first = lst(1, a={"f": B, "g": B}, b={"f": B, "g": B})
    assert mem.since("a") is None and first["a"].since is None
    # nothing known yet: everything whole (no earlier listing: no age limit either)
    assert mem.select(first, eofs) == [("f", B, None), ("g", B, None)]
    assert mem.since("a") == 1
    mem.done("f")  # g had a problem: not remembered
    second = lst(2, a={"f": None, "g": None}, b={"f": None, "g": None})
    assert second["a"].since == 1
    # f unchanged: skipped; g whole again, up to the EOF of the previous listing
    assert mem.select(second, eofs) == [("g", B, 2 * B)]
    mem.done("g")
    # f rolled forward; a change on a at 9K, and f grew to 30K since the last listing:
    # planned from 9K up to 20K (the younger part waits for the next pass)
    eofs = {"f": 30 * B, "g": 2 * B}
    assert mem.select(lst(3, a={"f": 9 * B, "g": None}, b={"f": None, "g": None}),
                      eofs) == [("f", 9 * B, 20 * B)]
    mem.done("f")
    # nothing changed since, but 20K..30K was not planned yet: now it is
    assert mem.select(lst(4, a={"f": None, "g": None}, b={"f": None, "g": None}),
                      eofs) == [("f", 20 * B, 30 * B)]
    mem.done("f")
    assert mem.select(lst(5, a={"f": None, "g": None}, b={"f": None, "g": None}),
                      eofs) == []  # all of f agrees now
    # a change above the previous listing's EOF (30K) only: nothing old enough to plan
    # (f agrees below 30K), planned the pass after
    eofs = {"f": 40 * B, "g": 2 * B}
    assert mem.select(lst(6, a={"f": 35 * B, "g": None}, b={"f": None, "g": None}),
                      eofs) == []
    assert mem.select(lst(7, a={"f": None, "g": None}, b={"f": None, "g": None}),
                      eofs) == [("f", 30 * B, 40 * B)]
    mem.done("f")
    assert mem.select(lst(8, a={"f": 7 * B, "g": None}, b={"f": 5 * B, "g": None}),
                      eofs) == [("f", 5 * B, 40 * B)]
    # not done (a problem, or the pass failed): next time f is planned whole
    assert mem.select(lst(9, a={"f": None, "g": None}, b={"f": None, "g": None}),
                      eofs) == [("f", B, 40 * B)]
    mem.done("f")
    # b no longer lists g (e.g. deleted when fully trimmed): planned whole
    assert mem.select(lst(10, a={"f": None, "g": None}, b={"f": None}),
                      eofs) == [("g", B, 2 * B)]
    # another member set: everything whole
    assert mem.select(lst(11, a={"f": None}, c={"f": None}), {"f": 40 * B}) == [
        ("f", B, 40 * B)]
    mem.done("f")
    # a file that appeared since the previous listing is younger than it: planned by
    # the next pass, up to the EOF listed now
    eofs = {"f": 40 * B, "n": 3 * B}
    assert mem.select(lst(12, a={"f": None, "n": B}, c={"f": None}), eofs) == []
    assert mem.select(lst(13, a={"f": None, "n": None}, c={"f": None}), eofs) == [
        ("n", B, 3 * B)]
    mem.done("n")
    assert mem.select(lst(14, a={"f": None, "n": None}, c={"f": None}), eofs) == []
    # a member that could not list changes: everything whole, tokens forgotten
    assert mem.select(None, {"f": 40 * B}) == [("f", B, None)] and mem.since("a") is None
    assert mem.select({"a": Listing(None, 12, {})}, {}) == [] and len(mem) == 0  # pruned
