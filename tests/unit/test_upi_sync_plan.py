"""Tests of the CP UPI sync plan (the design paper's CP repair step 3): chunks an
abandoned append left on the head (or head and middle) are copied forward to every real
UPI member lacking them, never reset; conflicts are reported; witnesses never take part."""

from __future__ import annotations

from dataclasses import dataclass

from machi.core.checksum import CsumTag, TaggedCsum, digest
from machi.core.projection import make_projection
from machi.core.repair_plan import Copy, Problem, Reset, Roles, plan_file, upi_sync_roles

B = 1024


@dataclass(frozen=True)
class Ent:
    offset: int
    size: int
    csum: TaggedCsum | None


def csum(key: object) -> TaggedCsum:
    return TaggedCsum(CsumTag.SERVER, digest(repr(key).encode()))


def test_roles_cover_the_real_upi_with_the_tail_as_source() -> None:
    """CP with two or more real UPI members: the union rule over them, the tail first;
    AP, or a single real member, has nothing to sync; witnesses never appear."""
    p = make_projection(epoch_number=4, author_server="b", chain_name="c",
                        all_members=("w", "a", "m", "b", "c"), mode="cp", witnesses=("w",),
                        upi=("w", "a", "m", "b"), repairing=("c",))
    roles = upi_sync_roles(p)
    assert roles == Roles("ap", "b", (), ("a", "m"))
    assert roles.participants == ("b", "a", "m")
    assert upi_sync_roles(p.evolve(mode="ap", witnesses=())) is None
    assert upi_sync_roles(p.evolve(upi=("w", "b"), repairing=("a", "m", "c"))) is None


def test_head_only_chunk_is_copied_forward_never_reset() -> None:
    """A chunk on the head alone and one on head and middle go to the members lacking
    them (the tail included); the copy names the other holders as fallback sources."""
    roles = Roles("ap", "b", (), ("a", "m"))
    x, y, z = Ent(B, 10, csum(1)), Ent(B + 10, 7, csum(2)), Ent(B + 17, 3, csum(3))
    out = list(plan_file("f", roles, {"a": [x, y, z], "m": [x, z], "b": [z]}))
    assert not any(isinstance(d, (Reset, Problem)) for d in out)
    assert out == [
        Copy("f", B, 10, x.csum, "a", ("b",), ("m",)),  # type: ignore[arg-type]
        Copy("f", B + 10, 7, y.csum, "a", ("b", "m")),  # type: ignore[arg-type]
    ]


def test_conflicting_upi_copies_are_a_problem() -> None:
    """Two UPI members with different bytes at one place: reported, nothing copied."""
    roles = Roles("ap", "b", (), ("a",))
    out = list(plan_file("f", roles, {"a": [Ent(B, 4, csum("A"))],
                                      "b": [Ent(B, 4, csum("B"))]}))
    assert len(out) == 1 and isinstance(out[0], Problem)
    assert out[0].reason == "conflicting checksums at one place"
