"""The documentation site builds with `mkdocs build --strict` (MkDocs, Material theme, mkdocstrings for the API
reference): a broken link, a page missing from the navigation, an API name that no longer resolves or any other
warning fails the build. Skips only where MkDocs is not installed (it is in the `test` extra)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mkdocs() -> list[str]:
    pytest.importorskip("mkdocs", reason="MkDocs is not installed (pip install -e '.[test]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    return [sys.executable, "-m", "mkdocs"]


def test_mkdocs_build_strict_has_no_warnings(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*_mkdocs(), "build", "--strict", "--clean", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert proc.returncode == 0 and not warnings, f"mkdocs build --strict failed:\n{log[-6000:]}"
    # the pages a newcomer is sent to, and the API reference rendered from the docstrings
    for page in ("index.html", "guarantee/index.html", "threat-model/index.html", "guides/real-faces/index.html",
                 "results/index.html", "api/pipeline/index.html", "api/privacy/index.html"):
        assert (site / page).is_file(), f"{page} was not built"
    api = (site / "api" / "privacy" / "index.html").read_text(encoding="utf-8")
    assert "gaussian_sigma" in api and "calibrate" in api
    assert "PrivacyLedger" in (site / "api" / "ledger" / "index.html").read_text(encoding="utf-8")
    assert (site / "grid.png").is_file() and (site / "figures" / "privacy_utility.png").is_file()


def test_every_page_is_in_the_navigation():
    """mkdocs only reports pages left out of `nav` at INFO level; a page nobody can reach is a page lost."""
    yaml = pytest.importorskip("yaml")
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    in_nav = set(pages(config["nav"]))
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk - in_nav == set(), f"pages missing from mkdocs.yml's nav: {sorted(on_disk - in_nav)}"
    assert in_nav - on_disk == set(), f"nav entries without a page: {sorted(in_nav - on_disk)}"


def test_the_figures_the_docs_link_from_results_resolve():
    """docs/figures/ holds links to the figures the benchmark scripts write into results/: each must resolve."""
    for link in (ROOT / "docs" / "figures").iterdir():
        assert link.resolve().is_file(), f"docs/figures/{link.name} points at a missing file"
