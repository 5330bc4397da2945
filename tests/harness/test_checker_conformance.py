"""Every history in the shared conformance folder gets its known verdict (good valid, bad invalid).

The folder is ``<repo>/../shared/conformance`` or ``$MACHI_CONFORMANCE_DIR``. When it is
missing the test fails (CI has it): a silently skipped conformance suite proves nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.checker.models import get_model
from harness.checker.run import check_history
from harness.history import pair_ops, read_history

REPO = Path(__file__).resolve().parents[2]

# Initial values the Knossos tests used (the file's own header comment says so).
INITIAL = {"multi-register/good/multi-register.edn": {"x": 0, "y": 0}}


def conformance_dir() -> Path:
    env = os.environ.get("MACHI_CONFORMANCE_DIR")
    return Path(env) if env else REPO.parent / "shared" / "conformance"


def _histories() -> list[str]:
    root = conformance_dir()
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.edn"))


HISTORIES = _histories()


def test_conformance_folder_is_present() -> None:
    """The conformance histories exist (absent folder = failure, never a silent skip)."""
    root = conformance_dir()
    assert root.is_dir(), f"conformance histories not found at {root}"
    assert len(HISTORIES) >= 20, f"expected the Knossos histories under {root}"
    assert any("/bad/" in h for h in HISTORIES) and any("/good/" in h for h in HISTORIES)


@pytest.mark.parametrize("rel", HISTORIES)
def test_conformance_verdict(rel: str) -> None:
    """The checker's verdict matches the folder the history sits in (good/ or bad/)."""
    parts = Path(rel).parts  # knossos/<model>/<good|bad>/<file>
    model_name, expected_dir = parts[1], parts[2]
    assert expected_dir in ("good", "bad"), rel
    ops = pair_ops(read_history(conformance_dir() / rel))
    initial = INITIAL.get("/".join(parts[1:]))
    result = check_history(ops, model_name, time_limit_s=60, memory_limit_mb=4096, initial=initial)
    assert result.valid is (expected_dir == "good"), (rel, result.witness)
    if result.valid is False:
        w = result.witness
        assert w is not None and w["explanation"]
        assert "op" in w, "an invalid verdict names the op that could not be linearized"


def test_multi_register_initial_value_matters() -> None:
    """With registers starting at nil instead of 0 the multi-register history is not valid."""
    rel = "knossos/multi-register/good/multi-register.edn"
    path = conformance_dir() / rel
    assert path.is_file()
    ops = pair_ops(read_history(path))
    from harness.checker.linear import check_linearizable

    assert check_linearizable(ops, get_model("multi-register")).valid is False
