"""Goal: machi/core stays sans-IO: it imports only pure standard-library modules and blake3."""

from __future__ import annotations

import ast
import pathlib
import sys

CORE = pathlib.Path(__file__).resolve().parents[2] / "machi" / "core"

# Pure standard-library modules the core may use.  No socket, threading, asyncio, time,
# random, os, subprocess, sqlite3, logging (the core emits trace effects instead).
ALLOWED_STDLIB = {
    "__future__", "abc", "array", "base64", "binascii", "bisect", "collections", "contextlib",
    "copy", "dataclasses", "enum", "functools", "hashlib", "heapq", "hmac", "io", "itertools",
    "json", "math", "operator", "re", "string", "struct", "types", "typing", "unicodedata",
    "zlib",
}
# blake3 is a pure hash function; it is the project's checksum and has no I/O.
ALLOWED_THIRD_PARTY = {"blake3"}


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], node.lineno))
    return out


def test_core_imports_are_pure() -> None:
    """Every import in machi/core is relative, machi.core, allowed stdlib or blake3."""
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        for mod, line in _imports(path):
            if mod == "machi":
                continue  # checked below: only machi.core
            if mod in ALLOWED_STDLIB or mod in ALLOWED_THIRD_PARTY:
                continue
            bad.append(f"{path.relative_to(CORE.parent.parent)}:{line}: import {mod}")
    assert not bad, "impure imports in machi/core:\n" + "\n".join(bad)


def test_core_imports_only_core_from_machi() -> None:
    """machi/core never imports machi.storage, machi.node, machi.client or machi.sim."""
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("machi") and not node.module.startswith("machi.core"):
                    bad.append(f"{path.name}:{node.lineno}: from {node.module}")
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                bad.append(f"{path.name}:{node.lineno}: relative import leaves machi.core")
    assert not bad, "\n".join(bad)


def test_allowed_stdlib_names_are_stdlib() -> None:
    """The allow-list names real standard-library modules (guards against typos)."""
    assert ALLOWED_STDLIB <= set(sys.stdlib_module_names) | {"__future__"}
