"""Every code block a reader can copy from the README and the documentation site (`docs/**/*.md`) runs as written,
unless an HTML comment right above it says why it cannot run here (``<!-- not run: ... -->``).

The blocks of one file run in order, in one fresh folder, as a reader working through the page would run them:
a later block may use the files and (Python) names an earlier one made. ``python`` blocks are executed in-process
in one namespace per file. ``bash`` blocks may hold ``dpdiffusion ...`` commands, run in-process through the
console script's entry point ``dpdiffusion.cli.main`` (the same argv, without a new interpreter's start-up), and
``python -c "..."`` commands, run in a fresh namespace; every other bash block must carry the not-run marker.
Blocks without a language (sample output, command summaries) are not code to copy and are not run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(?:<!--\s*not run:(?P<why>[^>]*)-->\s*\n)?^```(?P<lang>python|bash|sh|console|shell)[ \t]*\n"
                   r"(?P<code>.*?)^```", re.S | re.M)

_workdirs: dict[str, Path] = {}
_namespaces: dict[str, dict] = {}
_failed: dict[str, str] = {}


def _blocks():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        name = page.relative_to(ROOT).as_posix()
        for m in BLOCK.finditer(text):
            line = text[:m.start("code")].count("\n") + 1
            yield pytest.param(name, line, m.group("lang"), m.group("code"), m.group("why"), id=f"{name}:{line}")


BLOCKS = list(_blocks())


def _commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n", " ", code)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def _run_bash(code: str, where: str) -> None:
    from dpdiffusion.cli import main

    for argv in _commands(code):
        if argv[0] == "dpdiffusion":
            try:
                status = main(argv[1:])
            except SystemExit as exc:  # argparse and parser.exit
                status = exc.code
            assert status in (0, None), f"{where}: `{shlex.join(argv)}` exited with status {status}"
        elif argv[:2] in (["python", "-c"], ["python3", "-c"]) and len(argv) == 3:
            exec(compile(argv[2], where, "exec"), {"__name__": "__main__"})
        else:
            pytest.fail(f"{where}: `{shlex.join(argv)}` is neither `dpdiffusion ...` nor `python -c ...`; run it some "
                        "other way or put `<!-- not run: why -->` right above the block")


@pytest.mark.parametrize("page, line, lang, code, why", BLOCKS)
def test_doc_block_runs(page, line, lang, code, why, tmp_path_factory, monkeypatch):
    where = f"{page}:{line}"
    if why is not None:
        assert why.strip(), f"{where}: a block that is not run must say why"
        pytest.skip(f"not run: {why.strip()}")
    assert lang in ("python", "bash"), f"{where}: a runnable block is ```python or ```bash, got ```{lang}"
    if page in _failed:
        pytest.fail(f"{where}: not run, an earlier block of {page} failed ({_failed[page]})")
    workdir = _workdirs.setdefault(page, tmp_path_factory.mktemp(re.sub(r"\W", "_", page)))
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    try:
        if lang == "python":
            namespace = _namespaces.setdefault(page, {"__name__": "__docs__"})
            exec(compile(code, where, "exec"), namespace)
        else:
            _run_bash(code, where)
    except BaseException:
        _failed[page] = where
        raise


def test_every_page_block_is_collected_or_explicitly_plain():
    """A fence with another language tag (```py, ```python3) would silently escape the test: refuse it."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        tags = set(re.findall(r"^```[ \t]*(\S+)[ \t]*$", text, re.M))
        odd = tags - {"python", "bash", "sh", "console", "shell", "text", "yaml", "json", "toml"}
        assert not odd, f"{page.relative_to(ROOT)} has code fences tagged {sorted(odd)}; use ```python or ```bash"
