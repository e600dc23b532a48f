"""The demo's report rendered from a small in-memory results structure: its wording, its Markdown, and its HTML in a
real browser (headless Chromium, skipped cleanly where none is installed)."""

from __future__ import annotations

import ast
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dpdiffusion.demo_report import (
    BENCHMARK_COMMAND,
    BENCHMARK_SPEEDUP_TARGETS,
    benchmark_note,
    markdown_to_html,
    report_lines,
    seed_spread_note,
)

ROOT = Path(__file__).resolve().parents[1]
INF = math.inf


def _release(eps, guarantee):
    sigma = 0.0 if math.isinf(eps) else 2.0 / eps
    return {"epsilon": eps, "delta": 1e-5, "noise_multiplier": 0.0 if math.isinf(eps) else 4.2,
            "sigmas": {"dark_skin": sigma, "long_hair": sigma}, "strength": 0.0 if math.isinf(eps) else 0.71,
            "noise_source": "csprng", "guarantee": guarantee,
            "neighbouring_relation": "attribute-neighbours (same residual r)"}


def _unlearning_row(seconds, speedup, acc):
    return {"seconds": seconds, "speedup_vs_retrain": speedup, "test_accuracy": acc, "agreement_with_retrained": 0.97,
            "prob_distance_to_retrained": 0.03, "l2_to_retrained": 12.5, "mia_auc": 0.51, "probe_accuracy": 0.6}


def _reversed_row(seconds, speedup, acc, gap):
    return {"seconds": seconds, "speedup_vs_retrain": speedup, "clean_accuracy": 0.95, "reversed_accuracy": acc,
            "gap_restored": gap, "gap_restored_per_second": None if seconds is None else gap / seconds,
            "agreement_with_retrained": 0.9, "mia_auc": 0.5}


def _eval_row(method, eps, relation="attribute-neighbours (same residual r)", matched=None):
    return {"method": method, "epsilon": eps, "matched_to_epsilon": matched, "leakage_bound": None if eps is None
            else (1.0 if math.isinf(eps) else 0.731), "description": {"neighbouring_relation": relation},
            "leakage": {"best": {"dark_skin": {"accuracy": 0.62}, "long_hair": {"accuracy": 0.58}}},
            "utility": {"mean_accuracy": 0.9, "mean_ratio": 0.97, "min_ratio": 0.95}, "identity": {"top1": 0.1},
            "quality": {"psnr_db": 18.5, "ssim": 0.6, "fd_synthfaces_resnet": 3.2}}


def make_metrics(*, slow=True, out=Path("/tmp/x")) -> dict:
    """What ``dpdiffusion demo`` writes to metrics.json, small: two releases, the unlearning tables, a sweep."""
    fo, so = (0.9, 0.548) if slow else (60.0, 12.0)
    rows = {"original": _unlearning_row(None, None, 0.90), "finetune": _unlearning_row(4.0, 2.5, 0.93),
            "first_order": _unlearning_row(10.0 / fo, fo, 0.94), "second_order": _unlearning_row(10.0 / so, so, 0.94),
            "retrain": _unlearning_row(10.0, 1.0, 0.95)}
    cols = list(next(iter(rows.values())))
    rev_rows = {"original": _reversed_row(None, None, 0.60, 0.0), "finetune": _reversed_row(4.0, 2.5, 0.66, 0.5),
                "first_order": _reversed_row(10.0 / fo, fo, 0.69, 0.75),
                "second_order": _reversed_row(10.0 / so, so, 0.70, 0.83),
                "retrain": _reversed_row(10.0, 1.0, 0.72, 1.0)}
    return {
        "attributes": ["dark_skin", "long_hair"], "num_images": 3, "num_inference_steps": 2, "seconds": 12.0,
        "stage_seconds": {"protect": 1.0, "unlearning": 8.0, "evaluation": 3.0}, "torch_threads": 2,
        "releases": [_release(1.0, "formal"), _release(INF, "none (epsilon = inf)")],
        "unlearning": {
            "setup": "64 SynthFaces training images.", "table": {"columns": cols, "rows": rows, "reference": "retrain"},
            "reversed_setup": "32 reversed faces.", "scale": {"num_train": 64, "epochs": 1, "num_changed": 19},
            "table_reversed": {"columns": list(rev_rows["retrain"]), "rows": rev_rows, "reference": {
                "reversed_accuracy": 0.72, "reversed_accuracies": [0.70, 0.74], "gap_restored_seeds": [0.8333, 1.1667],
                "clean_accuracy": 0.95, "clean_accuracies": [0.95, 0.95], "agreement_floor": 0.91, "mia_auc": 0.5,
                "retrain_seeds": 2}}},
        "evaluation": {
            "config": {"protected": ["dark_skin", "long_hair"]},
            "clean": {"leakage_accuracy": 0.97, "utility_mean_accuracy": 0.93, "identity": {"top1": 0.8}},
            "rows": [_eval_row("dpdiffusion", 1.0), _eval_row("dpdiffusion", INF),
                     _eval_row("dp_pix", 1.0, "images differing in at most m = 1 pixels"),
                     _eval_row("blur", None, "none (no formal guarantee)", matched=1.0)],
            "unmatched_obfuscations": [{"method": "pixelate", "matched_to_epsilon": 1.0, "matched_metric": "psnr_db",
                                        "matched_target": 41.0, "nearest_parameter": 1.0, "nearest_achieved": 100.0,
                                        "reason": "no pixelate setting matches: the nearest (cell size 1, 100 dB PSNR "
                                                  "against the target 41) leaves the images unchanged"}],
            "files": {"results_md": str(out / "evaluation" / "results.md")}},
    }


# ------------------------------------------------------------------------------------------------ wording
def test_epsilon_inf_reads_as_no_protection_never_formal():
    text = "\n".join(report_lines(make_metrics(), "/tmp/x"))
    inf_rows = [line for line in text.splitlines() if "| inf (" in line]
    assert len(inf_rows) == 2  # the release table and the evaluation table
    assert all("no protection" in line and "formal" not in line for line in inf_rows)
    assert "| 1 | 1e-05 |" in text and "| formal |" in text  # the finite release keeps its formal guarantee


def test_retraining_is_100_percent_and_the_seed_spread_is_stated():
    lines = report_lines(make_metrics(), "/tmp/x")
    text = "\n".join(lines)
    assert "| retrain (mean of 2 seeds) | 10 | 1 | 0.95 | 0.72 | 1 |" in text
    assert "restores 100% of the gap by definition" in text and "83%, 117%" in text and "83% to 117%" in text
    nan_ref = {"gap_restored_seeds": [math.nan, math.nan], "retrain_seeds": 2}
    assert "undefined (nan)" in seed_spread_note(nan_ref)


def test_small_run_says_it_is_not_the_benchmark_and_names_the_command():
    text = "\n".join(report_lines(make_metrics(slow=True), "/tmp/x"))
    note = [line for line in text.splitlines() if "not the unlearning benchmark" in line]
    assert len(note) == 1 and BENCHMARK_COMMAND in note[0] and "second_order 0.548x" in note[0]
    assert "retraining on 64 images for 1 epoch is cheap (10 s here)" in note[0]
    assert "not the unlearning benchmark" not in "\n".join(report_lines(make_metrics(slow=False), "/tmp/x"))
    fast = make_metrics(slow=False)["unlearning"]["table_reversed"]
    assert benchmark_note(fast) is None


def test_benchmark_targets_are_the_benchmark_scripts():
    tree = ast.parse((ROOT / "scripts" / "benchmark_unlearning.py").read_text())
    targets = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", None) == "SPEEDUP_TARGETS")
    assert targets["resnet"] == BENCHMARK_SPEEDUP_TARGETS


def test_unmatched_obfuscation_is_no_setting_matches_not_a_method_with_figures():
    text = "\n".join(report_lines(make_metrics(), "/tmp/x"))
    row = [line for line in text.splitlines() if line.startswith("| pixelate |")]
    assert len(row) == 1 and "no setting matches (quality of eps=1)" in row[0]
    assert "100" not in row[0] and row[0].count("| - ") == 8  # no figures: they would be the clean images'
    assert "cell size 1, 100 dB PSNR" in text and "so it has no row of figures" in text


def test_markdown_to_html_puts_every_data_row_in_tbody():
    page = markdown_to_html(report_lines(make_metrics(), "/tmp/x"))
    tables = _tables(page)
    assert len(tables) == 4  # releases, unlearning, reversed split, privacy-utility
    for head, body in tables:
        assert len(head) == 1 and body and all(len(row) == len(head[0]) for row in body), (head, body)
    assert [len(body) for _, body in tables] == [2, 5, 5, 6]
    assert "<script>" not in markdown_to_html(["text <script>alert(1)</script>"])  # raw HTML is escaped


def test_audit_note_is_printed_once_right_before_the_seeded_noise_warning(capsys):
    from dpdiffusion.demo import AUDIT_NOISE_NOTE, _explain_audit_noise
    from dpdiffusion.privacy.noise import InsecurePRNGWarning

    shown = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: shown.append(
            (str(message), capsys.readouterr().out.count(AUDIT_NOISE_NOTE)))
        with _explain_audit_noise():
            for _ in range(2):
                warnings.warn("these outputs are not private releases", InsecurePRNGWarning)
            warnings.warn("something else", UserWarning)
    # every warning is still shown; the note once, printed before the first seeded-noise warning
    assert shown == [("these outputs are not private releases", 1), ("these outputs are not private releases", 0),
                     ("something else", 0)]
    assert "on purpose" in AUDIT_NOISE_NOTE and "Nothing the audit draws is released" in AUDIT_NOISE_NOTE


# ------------------------------------------------------------------------------------------------ in a browser
class _TableParser(HTMLParser):
    """Each <table> as (header rows, body rows), a row being its cells' text."""

    def __init__(self):
        super().__init__()
        self.tables, self.section, self.row, self.cell = [], None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(([], []))
        elif tag in ("thead", "tbody"):
            self.section = tag
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.row.append("".join(self.cell).strip())
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.tables[-1][0 if self.section == "thead" else 1].append(self.row)
            self.row = None
        elif tag in ("thead", "tbody"):
            self.section = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _tables(page: str) -> list:
    parser = _TableParser()
    parser.feed(page)
    return parser.tables


def _chromium() -> str | None:
    for candidate in (os.environ.get("DPDIFFUSION_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium(page: Path, *args: str) -> str:
    """Run headless Chromium on a local page (its own throwaway profile); returns stdout."""
    exe = _chromium()
    with tempfile.TemporaryDirectory(prefix="dp-chromium-") as profile:
        done = subprocess.run([exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args,
                               page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def check_report_in_browser(html_path: Path, screenshot: Path | None = None, *, height: int = 3000) -> list:
    """The browser's DOM of a report.html: every table has a header row and data rows of as many cells in
    <tbody>; optionally a screenshot. Returns the tables (used on a real demo's report too)."""
    tables = _tables(chromium(html_path, "--dump-dom"))
    assert tables, "no table in the page"
    for head, body in tables:
        assert len(head) == 1, f"header rows {head}"
        assert body and all(len(row) == len(head[0]) for row in body), f"data rows of {head[0]}: {body}"
    if screenshot is not None:
        chromium(html_path, f"--screenshot={screenshot}", f"--window-size=1280,{height}", "--hide-scrollbars")
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return tables


@pytest.mark.skipif(_chromium() is None, reason="no Chromium found (apt-get install -y chromium)")
def test_report_html_tables_have_data_rows_in_the_browser(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(markdown_to_html(report_lines(make_metrics(out=tmp_path), tmp_path)))
    tables = check_report_in_browser(page, tmp_path / "report.png")
    assert [len(body) for _, body in tables] == [2, 5, 5, 6]
    assert tables[0][1][1][0].startswith("inf (no noise: no protection)")
    assert tables[3][1][-1][:2] == ["pixelate", "no setting matches (quality of eps=1)"]
