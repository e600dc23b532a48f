"""Every Python block of the README runs as written (in a fresh folder), unless an HTML comment right above it says
why it cannot run here (``<!-- not run: ... -->``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!--\s*not run:(?P<why>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks():
    text = README.read_text(encoding="utf-8")
    for m in BLOCK.finditer(text):
        line = text[:m.start("code")].count("\n") + 1
        yield pytest.param(m.group("code"), m.group("why"), id=f"README.md:{line}")


@pytest.mark.parametrize("code, why", list(_blocks()))
def test_readme_python_block_runs(code, why, tmp_path, monkeypatch):
    if why is not None:
        assert why.strip(), "a block that is not run must say why"
        pytest.skip(f"not run: {why.strip()}")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
