"""The verdict record every checker returns, and how verdicts combine.

Owns ``CheckResult`` (valid: True | False | "unknown") and ``combine_verdicts``. It must not
check anything itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

UNKNOWN: Literal["unknown"] = "unknown"
Verdict = bool | Literal["unknown"]


@dataclass(slots=True)
class CheckResult:
    """A checker's answer for one history.

    ``witness`` explains a non-valid verdict (for linearizability: ``key``, ``op`` (the op
    that could not be linearized), ``prefix`` (longest linearized prefix found) and
    ``explanation``); ``stats`` holds counters (states explored, memo entries, ...).
    """

    valid: Verdict
    model: str
    ops: int
    keys: int
    witness: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (``valid`` stays true / false / "unknown")."""
        return {
            "valid": self.valid,
            "model": self.model,
            "ops": self.ops,
            "keys": self.keys,
            "witness": self.witness,
            "stats": self.stats,
        }


def combine_verdicts(verdicts: Iterable[Verdict]) -> Verdict:
    """False if any is False, else "unknown" if any is unknown, else True."""
    out: Verdict = True
    for v in verdicts:
        if v is False:
            return False
        if v == UNKNOWN:
            out = UNKNOWN
    return out


def exit_code(verdict: Verdict) -> int:
    """CLI exit status for a combined verdict: 0 valid, 1 invalid, 2 unknown."""
    if verdict is True:
        return 0
    if verdict is False:
        return 1
    return 2
