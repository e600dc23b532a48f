"""``dpdiffusion space --export DIR [--push REPO_ID]``: a complete Space repository, its YAML, its requirements, its
upload (against a local stand-in of the Hub API), the hardware it picks, and the app inside the wheel.

The end-to-end check (a fresh virtual environment with only the export's ``requirements.txt``, ``python app.py`` from
another folder, a `gradio_client.Client` protecting a face) is ``test_exported_space_runs_in_a_fresh_venv`` (slow).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from hub_standin import hub  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "spaces"

# import name -> distribution name, where they differ
DISTRIBUTION_OF = {"PIL": "pillow", "huggingface_hub": "huggingface-hub", "dp_accounting": "dp-accounting",
                   "skimage": "scikit-image", "sklearn": "scikit-learn", "yaml": "pyyaml", "dlib": "dlib-bin",
                   "markdown_it": "markdown-it-py"}
# provided by the Space itself: Gradio from `sdk_version`, `spaces` on ZeroGPU hardware (imported only there)
PROVIDED_BY_THE_SPACE = {"gradio", "spaces"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _third_party_imports(folder: Path) -> dict:
    """{top-level module: [files]} of every import (lazy ones included) in the .py files under ``folder``."""
    found: dict = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "dpdiffusion" and top != "__future__":
                    found.setdefault(top, []).append(str(path.relative_to(folder)))
    return found


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from dpdiffusion.space.export import export_space

    return export_space(tmp_path_factory.mktemp("export") / "space", model_repo="me/dp-pipeline")


# ------------------------------------------------------------------------------------------------ the folder
def test_export_writes_a_complete_space(exported):
    from dpdiffusion.models.default import DEFAULT_MODEL

    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "app.py", "dpdiffusion", "requirements.txt"]
    assert (exported / "app.py").read_text() == (SPACES / "app.py").read_text()
    pkg = exported / "dpdiffusion"
    for rel in ("__init__.py", "pipeline_dp_diffusion.py", "space/app.py", "space/layout.py", "space/hardware.py",
                "privacy/ledger.py", "model_cards/dp_diffusion_pipeline.md", "custom_pipeline/pipeline.py",
                "space/template/app.py"):
        assert (pkg / rel).is_file(), rel
    default = Path(DEFAULT_MODEL)
    for path in (p for p in default.rglob("*") if p.is_file()):  # the default model, byte for byte
        assert (pkg / "default_model" / path.relative_to(default)).read_bytes() == path.read_bytes()
    assert not (pkg / "unet2d_model").exists()  # the former default, which the Space never runs
    assert not [p for p in exported.rglob("*") if p.name == "__pycache__" or p.suffix == ".pyc" or p.is_symlink()]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".tmp-")]  # nothing left half-way


def test_space_yaml_validates_with_huggingface_hub(exported):
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(exported / "README.md", repo_type="space")
    data = card.data
    assert data.sdk == "gradio" and data.app_file == "app.py" and data.python_version == "3.11"
    assert re.fullmatch(r"\d+\.\d+\.\d+", data.sdk_version)
    assert data.models == ["me/dp-pipeline"]
    # sdk_version satisfies the package's own Gradio floor, and the README's local-run command installs it
    floor = next(r for r in _pyproject()["project"]["optional-dependencies"]["space"] if _name(r) == "gradio")
    assert tuple(map(int, data.sdk_version.split("."))) >= tuple(map(int, floor.split(">=")[1].split(".")))
    assert f"gradio=={data.sdk_version}" in card.text
    # the checked-in spaces/README.md is the template, naming the default pipeline repo
    from dpdiffusion.space.export import DEFAULT_PIPELINE_REPO

    assert SpaceCard.load(SPACES / "README.md").data.models == [DEFAULT_PIPELINE_REPO]


def test_requirements_are_third_party_only_and_cover_every_import(exported):
    lines = [ln.strip() for ln in (exported / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines, "no requirements"
    for line in lines:
        assert not line.startswith("-"), f"an option in requirements.txt: {line!r} (no extra index, no -e/-r)"
        assert "/" not in line and "\\" not in line and not line.endswith((".whl", ".tar.gz")), f"a path: {line!r}"
        assert _name(line) != "dpdiffusion", "the package lies next to app.py; it is not a requirement"
        assert re.fullmatch(r"[A-Za-z0-9._-]+\s*(>=|==|~=)\s*[0-9][0-9A-Za-z.]*", line), \
            f"not a plain pin/floor: {line!r}"
    # the same names and floors as the package's dependencies and its "faces" extra (photo mode; one list, checked)
    project = _pyproject()["project"]
    assert sorted(lines) == sorted(project["dependencies"] + project["optional-dependencies"]["faces"])
    names = {_name(line) for line in lines}
    imports = _third_party_imports(exported)
    missing = {m: files[:3] for m, files in imports.items()
               if m not in PROVIDED_BY_THE_SPACE and DISTRIBUTION_OF.get(m, m).lower().replace("_", "-") not in names}
    assert not missing, f"imported by the exported package but not in requirements.txt: {missing}"
    assert "gradio" in imports  # the scan sees lazy imports (gradio is imported inside functions only)


def test_export_refuses_a_non_empty_folder_and_never_leaves_half_a_space(tmp_path, monkeypatch):
    from dpdiffusion.space import export as export_mod

    target = tmp_path / "space"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="out_dir=.*not empty.*overwrite"):
        export_mod.export_space(target)
    with pytest.raises(ValueError, match="model_repo must be"):
        export_mod.export_space(tmp_path / "other", model_repo="no-namespace")

    def broken(folder, model_repo):
        (folder / "app.py").write_text("half")
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_write_space", broken)
    with pytest.raises(OSError, match="disk full"):
        export_mod.export_space(target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space"]  # no temp folder left
    assert [p.name for p in target.iterdir()] == ["mine.txt"]  # the old folder untouched
    monkeypatch.undo()
    export_mod.export_space(target, overwrite=True, model_repo=None)
    assert not (target / "mine.txt").exists() and (target / "app.py").is_file()
    from huggingface_hub import SpaceCard

    assert SpaceCard.load(target / "README.md").data.models is None


# ------------------------------------------------------------------------------------------------ hardware
def test_device_is_cuda_with_a_gpu_and_cpu_otherwise(monkeypatch):
    import torch

    from dpdiffusion.space import hardware

    monkeypatch.delenv(hardware.ENV_DEVICE, raising=False)
    monkeypatch.delenv(hardware.ENV_ZERO_GPU, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hardware.select_device() == "cpu"
    with pytest.raises(ValueError, match="DPDIFFUSION_SPACE_DEVICE='cuda'.*no CUDA"):
        monkeypatch.setenv(hardware.ENV_DEVICE, "cuda")
        hardware.select_device()
    monkeypatch.setenv(hardware.ENV_DEVICE, "tpu")
    with pytest.raises(ValueError, match="DPDIFFUSION_SPACE_DEVICE must be 'cpu', 'cuda' or 'cuda:N', got 'tpu'"):
        hardware.select_device()
    monkeypatch.delenv(hardware.ENV_DEVICE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.select_device() == "cuda"
    assert hardware.select_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(hardware.ENV_ZERO_GPU, "true")  # ZeroGPU: the GPU appears inside spaces.GPU calls only
    assert hardware.select_device() == "cuda"


def test_load_pipeline_moves_the_model_to_the_selected_device(dummy_pipe, tmp_path, monkeypatch):
    from dpdiffusion.space import config, hardware

    dummy_pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    moved = []
    from dpdiffusion import DPDiffusionPipeline

    monkeypatch.setattr(DPDiffusionPipeline, "to", lambda self, device: moved.append(device) or self)
    monkeypatch.setattr(config, "select_device", lambda device=None: "cuda")
    pipe, name = config.load_pipeline(str(tmp_path / "model"))
    assert moved == ["cuda"] and name == "a local pipeline"  # never the server's path (no model card here)
    monkeypatch.setattr(config, "select_device", hardware.select_device)
    monkeypatch.setenv(hardware.ENV_DEVICE, "cpu")
    moved.clear()
    config.load_pipeline(str(tmp_path / "model"))
    assert moved == []  # already on the CPU


def test_zero_gpu_wraps_the_generating_handlers_with_spaces_gpu(monkeypatch, dummy_pipe, tmp_path):
    import types

    from dpdiffusion.space import hardware, layout

    calls = []

    def GPU(duration=None):  # noqa: N802  (the `spaces` package's name)
        def wrap(fn):
            def wrapped(*args, **kwargs):
                calls.append((fn.__name__, duration))
                return fn(*args, **kwargs)
            wrapped.__wrapped__ = fn
            return wrapped
        return wrap

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=GPU))
    monkeypatch.delenv(hardware.ENV_ZERO_GPU, raising=False)
    f = lambda: 1  # noqa: E731
    assert hardware.gpu_task(f) is f  # not on ZeroGPU: unchanged, even with `spaces` installed
    monkeypatch.setenv(hardware.ENV_ZERO_GPU, "true")
    monkeypatch.setenv(hardware.ENV_GPU_DURATION, "42")
    assert hardware.gpu_task(f)() == 1 and calls == [("<lambda>", 42)]
    calls.clear()
    from dpdiffusion.privacy.ledger import PrivacyLedger
    from dpdiffusion.space.config import SpaceConfig
    from dpdiffusion.space.feedback import FeedbackLog
    from dpdiffusion.space.session import DPSpace

    config = SpaceConfig(num_inference_steps=2)
    space = DPSpace(dummy_pipe, ledger=PrivacyLedger(tmp_path / "l.sqlite", budget_epsilon=config.budget_epsilon,
                                                     delta=config.delta),
                    feedback=FeedbackLog(tmp_path / "feedback"), config=config)
    on_protect, on_more_privacy, on_more_detail, on_accept, on_sample = layout._handlers(space)
    assert on_accept.__name__ == "on_accept" and not hasattr(on_accept, "__wrapped__")
    assert [h.__wrapped__.__name__ for h in (on_protect, on_more_privacy, on_more_detail)] == \
        ["on_protect", "on_more_privacy", "on_more_detail"]
    monkeypatch.setitem(sys.modules, "spaces", None)  # ZeroGPU flag without the package: unchanged, warned
    assert hardware.gpu_task(f) is f


def test_ledger_goes_to_persistent_storage_when_data_exists(tmp_path, monkeypatch):
    from dpdiffusion.space import config, hardware

    monkeypatch.delenv(config.ENV_DIR, raising=False)
    data = tmp_path / "data"
    monkeypatch.setattr(hardware, "PERSISTENT_STORAGE", data)
    assert config.default_space_dir() == Path.home() / ".cache" / "dpdiffusion" / "space"  # no /data
    data.mkdir()
    assert config.default_space_dir() == data / "dpdiffusion-space"
    data.chmod(0o500)  # /data without write access (no persistent storage attached to this user): not used
    try:
        if not os.access(data, os.W_OK):  # root can write anyway
            assert config.default_space_dir() == Path.home() / ".cache" / "dpdiffusion" / "space"
    finally:
        data.chmod(0o700)
    monkeypatch.setenv(config.ENV_DIR, str(tmp_path / "mine"))
    assert config.default_space_dir() == tmp_path / "mine"


# ------------------------------------------------------------------------------------------------ push
def _all_files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_space_uploads_every_file(exported, hub):  # noqa: F811
    from dpdiffusion.space.export import push_space

    info = push_space(exported, "me/dp-faces", endpoint=hub.url, token="hf_x", private=True)
    stored = hub.files("me/dp-faces", "space")
    assert stored == _all_files(exported)  # every file, byte for byte (the safetensors weights included)
    create = hub.repos[("space", "me/dp-faces")]["create"]
    assert create["type"] == "space" and create["sdk"] == "gradio" and create["name"] == "dp-faces"
    assert create["organization"] == "me"
    assert info.oid == hub.repos[("space", "me/dp-faces")]["commits"][-1]["oid"]
    assert not hub.unknown, hub.unknown
    # upload_folder had the README's YAML validated by the Hub's route: a Gradio Space's, without errors
    (repo_type, meta, errors), = hub.validated
    assert repo_type == "space" and meta["sdk"] == "gradio" and meta["models"] == ["me/dp-pipeline"] and not errors
    with pytest.raises(ValueError, match="is not a Space written by export_space"):
        push_space(exported / "dpdiffusion", "me/dp-faces", endpoint=hub.url)
    with pytest.raises(ValueError, match="repo_id must be a Hub repository id"):
        push_space(exported, "dp-faces", endpoint=hub.url)


def test_cli_space_export_and_push(tmp_path, hub):  # noqa: F811
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN="hf_x", PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("HF_HUB_OFFLINE", None)
    run = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "space", "--export", str(tmp_path / "s"),
                          "--push", "me/cli-space", "--model-repo", "me/pipe"], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "wrote the Space repository" in run.stdout and "pushed it to the Space me/cli-space" in run.stdout
    assert hub.files("me/cli-space", "space") == _all_files(tmp_path / "s")
    run = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "space", "--export", str(tmp_path / "s")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "not empty" in run.stderr
    run = subprocess.run([sys.executable, "-m", "dpdiffusion.cli", "space", "--export", str(tmp_path / "t"),
                          "--port", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "--port" in run.stderr and not (tmp_path / "t").exists()


# ------------------------------------------------------------------------------------------------ the wheel
def test_the_wheel_carries_the_app(tmp_path):
    """``dpdiffusion space`` runs from an installed wheel: the app, its template and the custom-pipeline file are in
    it (package data through the links ``space/template`` -> ``spaces/``, ``custom_pipeline`` -> ``pipelines/``)."""
    pytest.importorskip("setuptools")
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PIP_NO_INDEX="1"))
    if run.returncode != 0 and "No module named" in run.stderr:
        pytest.skip(f"cannot build a wheel here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    wheel = next(tmp_path.glob("dpdiffusion-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("dpdiffusion/space/__init__.py", "dpdiffusion/space/app.py", "dpdiffusion/space/layout.py",
                 "dpdiffusion/space/session.py", "dpdiffusion/space/subjects.py", "dpdiffusion/space/export.py",
                 "dpdiffusion/space/hardware.py", "dpdiffusion/space/template/app.py",
                 "dpdiffusion/space/template/README.md", "dpdiffusion/space/template/requirements.txt",
                 "dpdiffusion/custom_pipeline/pipeline.py", "dpdiffusion/model_cards/dp_diffusion_pipeline.md",
                 "dpdiffusion/default_model/model_index.json"):
        assert name in names, name
    assert not any(n.startswith("spaces/") or n.startswith("tests/") for n in names)


# ------------------------------------------------------------------------------------------------ end to end
def _fresh_venv_or_skip(venv: Path, requirements: Path, sdk_version: str) -> Path:
    if shutil.which("python3") is None:
        pytest.skip("no python3 to create a virtual environment")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        # torch pinned first (the README's "Run it"): the CPU build; then only the Space's requirements and the
        # Gradio the Space installs from sdk_version
        [str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0"],
        [str(venv / "bin" / "pip"), "install", "-q", f"gradio=={sdk_version}", "-r", str(requirements)],
    ]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    for cmd in steps:  # without this process's PYTHONPATH: pip must see the fresh environment only
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=clean)
        if run.returncode != 0:
            text = run.stderr + run.stdout
            if any(s in text for s in ("No matching distribution", "Could not find a version", "Network is unreachable",
                                       "Temporary failure in name resolution", "ConnectionError", "No module named pip",
                                       "ensurepip")):
                pytest.skip(f"cannot build the fresh environment here (offline?): {text[-400:]}")
            raise AssertionError(f"{cmd} failed:\n{text[-3000:]}")
    return venv / "bin" / "python"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:::gradio.queueing")
def test_exported_space_runs_in_a_fresh_venv(tmp_path):
    """Export; a fresh venv with only requirements.txt (+ torch pinned, + Gradio from sdk_version); ``python app.py``
    from another folder, offline; a `gradio_client.Client` protects a face through it. Then the package's wheel in
    that venv: ``dpdiffusion space`` serves the app from the installed package."""
    import socket
    import urllib.request

    from gradio_client import Client
    from huggingface_hub import SpaceCard

    from dpdiffusion.space.export import export_space

    started = time.time()
    folder = export_space(tmp_path / "space")
    python = _fresh_venv_or_skip(tmp_path / "venv", folder / "requirements.txt",
                                 SpaceCard.load(folder / "README.md").data.sdk_version)
    installed = time.time()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "GRADIO"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), DPDIFFUSION_SPACE_DIR=str(tmp_path / "d"),
               DPDIFFUSION_SPACE_STEPS="2", DPDIFFUSION_SPACE_TORCH_THREADS="1", GRADIO_TEMP_DIR=str(tmp_path / "g"),
               HF_ENDPOINT="http://127.0.0.1:9")  # any Hub access fails at once
    # nothing from the checkout is importable: the exported folder's package is the only dpdiffusion
    check = subprocess.run([str(python), "-c", "import sys; sys.path.insert(0, sys.argv[1]); import dpdiffusion; "
                            "print(dpdiffusion.__file__)", str(folder)], capture_output=True, text=True, cwd=elsewhere,
                           env=env, timeout=300)
    assert check.returncode == 0 and check.stdout.strip().startswith(str(folder)), check.stderr
    proc = subprocess.Popen([str(python), str(folder / "app.py")], cwd=elsewhere, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, client = time.time() + 300, None
        while time.time() < deadline and proc.poll() is None and client is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:
                time.sleep(1)
        assert client is not None, proc.stdout.read() if proc.poll() is not None else "the app did not answer"
        original = client.predict(3, api_name="/sample")  # a SynthFaces face, as the page offers it
        assert original.startswith("data:image/png;base64,")
        weights = [1.0] * _n_weights(client)
        image_path, epsilon, spent, figures, status, report = client.predict(
            original, ["dark_skin"], 1.0, *weights, api_name="/protect")
        assert epsilon == 1.0 and spent == pytest.approx(1.0, rel=1e-3), status  # this session's spend
        assert "ε spent by this session" in figures and Path(image_path).is_file()
        assert len(list((tmp_path / "d" / "ledger").glob("ledger.sqlite"))) == 1
    finally:
        proc.terminate()
        try:
            out = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0]
    served = time.time()
    assert "Traceback" not in (out or ""), out[-3000:]
    # the same environment with the package's wheel installed: `dpdiffusion space` serves the app shipped inside it
    wheels = tmp_path / "wheels"
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(next(wheels.glob("*.whl")))],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    cli = Path(python).parent / "dpdiffusion"
    proc = subprocess.Popen([str(cli), "space", "--port", str(port)], cwd=elsewhere, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, page = time.time() + 300, None
        while time.time() < deadline and proc.poll() is None and page is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert page is not None and "How much privacy is enough?" in page, \
            proc.stdout.read() if proc.poll() is not None else "no answer"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"fresh venv: install {installed - started:.0f} s, app + client {served - installed:.0f} s, wheel + "
          f"`dpdiffusion space` {time.time() - served:.0f} s")


def _n_weights(client) -> int:
    info = client.view_api(return_format="dict", print_info=False)
    params = info["named_endpoints"]["/protect"]["parameters"]
    return len(params) - 3  # original, attributes, starting epsilon, then one weight per attribute
