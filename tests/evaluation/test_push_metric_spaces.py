"""``dpdiffusion evaluate push-metrics``: the evaluate modules as metric Spaces, pushed to the local Hub stand-in
(everything up to the network boundary), and the dry run's folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("evaluate")

from dpdiffusion.evaluation.metrics import METRIC_NAMES, metric_path, push_metric_spaces  # noqa: E402
from hub_standin import hub  # noqa: E402,F401  (the fixture; tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[2]
SPACE_FILES = {"README.md", "app.py", "requirements.txt"}


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_push_every_module_as_a_metric_space(hub):  # noqa: F811
    out = push_metric_spaces("me", token="hf_x", private=True, endpoint=hub.url)
    assert sorted(out) == sorted(f"me/{n}" for n in METRIC_NAMES)
    assert not hub.unknown, hub.unknown
    for name in METRIC_NAMES:
        files = hub.files(f"me/{name}", "space")
        assert set(files) == SPACE_FILES | {f"{name}.py"}
        # the module script travels byte for byte: the Space computes what the project computes
        assert files[f"{name}.py"] == (Path(metric_path(name)) / f"{name}.py").read_bytes()
        meta = _front_matter(files["README.md"].decode())
        assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and {"evaluate", "metric"} <= set(meta["tags"])
        assert len(meta["short_description"]) <= 60
        assert f'evaluate.load("me/{name}")' in files["app.py"].decode()
        assert {line.split(">")[0] for line in files["requirements.txt"].decode().split()} >= {"evaluate",
                                                                                                "dpdiffusion"}
        create = hub.repos[("space", f"me/{name}")]["create"]
        assert create["sdk"] == "gradio" and create["visibility"] == "private"
    assert all(errors == [] for _, _, errors in hub.validated)  # every Space card passes the Hub's YAML check


def test_push_refuses_bad_arguments_before_sending_anything(hub):  # noqa: F811
    with pytest.raises(ValueError, match="namespace must be"):
        push_metric_spaces("me/too", endpoint=hub.url)
    with pytest.raises(ValueError, match="name must be one of"):
        push_metric_spaces("me", names=["mia_auc", "accuracy"], endpoint=hub.url)
    assert hub.requests == []


def test_cli_push_metrics_to_the_stand_in_and_dry_run(tmp_path, hub):  # noqa: F811
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN="hf_x", PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "evaluate", "push-metrics", "--namespace", "org",
                           "--names", "mia_auc", "gap_restored"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pushed the metric Space org/mia_auc" in proc.stdout
    assert {k for k in hub.repos} == {("space", "org/mia_auc"), ("space", "org/gap_restored")}
    dry = tmp_path / "dry"
    proc = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "evaluate", "push-metrics", "--namespace", "org",
                           "--names", "dp_audit", "--dry-run-dir", str(dry)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (dry / "dp_audit").iterdir()} == SPACE_FILES | {"dp_audit.py"}
    assert len(hub.repos) == 2  # the dry run sent nothing
    bad = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "evaluate", "push-metrics", "--namespace",
                          "a b"], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "namespace must be" in bad.stderr and "Traceback" not in bad.stderr
