"""docs/threat-model.md is a table a reviewer can check: every attacker test it names exists, and every attacker test
in tests/attacks/ is named there (a channel without a row, or a row whose test was renamed away, fails here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "threat-model.md"
REF = re.compile(r"`(tests/attacks/[\w/]+\.py)::(\w+)`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.name.startswith("test_")}


def test_every_named_test_exists():
    refs = REF.findall(DOC.read_text(encoding="utf-8"))
    assert refs, "the threat model names no test"
    missing = [f"{f}::{t}" for f, t in refs if not (ROOT / f).is_file() or t not in _tests_in(ROOT / f)]
    assert not missing, f"docs/threat-model.md names tests that do not exist: {missing}"


def test_every_attacker_test_is_in_the_table():
    named = {(f, t) for f, t in REF.findall(DOC.read_text(encoding="utf-8"))}
    here = Path(__file__).resolve()
    unnamed = [f"{p.relative_to(ROOT)}::{t}" for p in sorted((ROOT / "tests" / "attacks").glob("test_*.py"))
               if p.resolve() != here for t in sorted(_tests_in(p))
               if (str(p.relative_to(ROOT)), t) not in named]
    assert not unnamed, f"attacker tests without a row in docs/threat-model.md: {unnamed}"
