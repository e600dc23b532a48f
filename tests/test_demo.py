"""``dpdiffusion demo`` end to end on a tiny in-process model (the embedded default runs in CI's demo step)."""

from __future__ import annotations

import json
import math

import pytest

from dpd_test_components import get_dummy_components


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from dpdiffusion import DPDiffusionPipeline

    path = tmp_path_factory.mktemp("tiny-model")
    DPDiffusionPipeline(**get_dummy_components(image_size=32)).save_pretrained(path)
    return path


def test_demo_writes_report_html_metrics_and_plots(tiny_model, tmp_path, capsys):
    from dpdiffusion.demo import run_demo

    out = tmp_path / "demo"
    report = run_demo(out, model=str(tiny_model), num_images=3, num_inference_steps=2, epsilons=(1.0, math.inf),
                      unlearning_options=dict(num_train=64, num_test=32, epochs=1),
                      evaluation_options=dict(num_train=20, num_test=20, num_inference_steps=1, classifier_epochs=1,
                                              epsilons=[1.0], audit_epsilons=[], methods=["dpdiffusion", "dp_pix"],
                                              progress=False))
    assert report == out / "report.md"
    text = report.read_text()
    for needle in ("## Protected releases", "## Feature unlearning", "## Privacy-utility evaluation",
                   "![unlearning time and accuracy](unlearning.png)", "evaluation/results.md", "| 1 | 1e-05 |",
                   "reversed-correlation split", "![gap restored against seconds](gap_restored.png)"):
        assert needle in text, needle
    html = (out / "report.html").read_text()
    # every table keeps its data rows in <tbody> (tests/test_demo_report_render.py also reads it in a browser)
    assert html.count("<table>") == 4 and html.count("<tbody>") == 4
    assert '<img src="grid.png" alt="before/after grid"' in html
    assert "no protection" in text and "restores 100% of the gap by definition" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["stage_seconds"]) == {"protect", "unlearning", "evaluation"}
    assert [r["epsilon"] for r in metrics["releases"]] == [1.0, math.inf]
    assert {r["method"] for r in metrics["evaluation"]["rows"]} == {"dpdiffusion", "dp_pix"}
    rev = metrics["unlearning"]["table_reversed"]
    assert list(rev["rows"]) == ["original", "finetune", "first_order", "second_order", "retrain"]
    gap = rev["rows"]["original"]["gap_restored"]
    assert rev["reference"]["retrain_seeds"] == 2 and (gap == 0.0 or math.isnan(gap))  # nan: no gap at this size
    for name in ("grid.png", "unlearning.png", "gap_restored.png", "evaluation/results.md",
                 "evaluation/privacy_utility.png"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "report.md" in last  # the last line printed points at the report


def test_markdown_to_html_renders_tables_images_and_escapes():
    from dpdiffusion.demo import markdown_to_html

    page = markdown_to_html(["# T <x>", "", "| a | b |", "|---|---|", "| 1 | `c` |", "", "![cap](p.png)", "", "text"])
    assert "<h1>T &lt;x&gt;</h1>" in page
    compact = "".join(page.split("\n"))
    assert "<thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td><code>c</code></td></tr>" in compact
    assert '<img src="p.png" alt="cap" />' in page and "<p>text</p>" in page
    # a table given as one multi-line item (as format_table returns it) is a table too, not one header row
    page = markdown_to_html(["| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |"])
    assert "".join(page.split("\n")).count("<tbody><tr><td>1</td><td>2</td></tr><tr><td>3</td><td>4</td></tr>") == 1
