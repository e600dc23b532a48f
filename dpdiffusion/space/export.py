"""A complete, ready-to-push Hugging Face Space repository, and its upload.

```python
from dpdiffusion.space import export_space, push_space
folder = export_space("my-space", model_repo="me/dp-diffusion-synthfaces")
push_space(folder, "me/dp-faces")        # create_repo(repo_type="space", space_sdk="gradio") + upload_folder
```

or ``dpdiffusion space --export my-space [--push me/dp-faces]``.

The folder holds what a Space needs and nothing it has to build:

- ``app.py``: the entry Hugging Face runs (``python app.py``); it starts `dpdiffusion.space.app.main`.
- ``README.md``: the Space's card; its YAML front matter says ``sdk: gradio``, the exact ``sdk_version`` (Gradio is
  installed by the Space from it), ``app_file``, ``python_version`` and ``models:`` (the pipeline repository).
- ``requirements.txt``: third-party packages only (no local path, no extra index: a GPU Space takes the default
  CUDA build of torch from PyPI, a CPU Space works with it too).
- ``dpdiffusion/``: the package itself, source and embedded default model, so the Space runs without
  ``dpdiffusion`` being on PyPI (``python app.py`` puts the folder of ``app.py`` first on ``sys.path``).

The files start from ``dpdiffusion/space/template/`` (the repository's ``spaces/`` folder). The folder is written
next to its destination and renamed into place, so an interrupted export leaves nothing half-written.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional, Sequence

from ..utils_files import write_folder_atomically

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "template"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed (or checked-out) `dpdiffusion` package
#: the Hub repository the embedded default pipeline is pushed to (``DPDiffusionPipeline.push_to_hub``)
DEFAULT_PIPELINE_REPO = "dpdiffusion/dp-diffusion-synthfaces"
SPACE_FILES = ("app.py", "README.md", "requirements.txt")
# What of the package goes into a Space (a whitelist: the Space repository is public, so a ledger, a subject secret,
# feedback, demo output or any other file someone left inside the package folder must never ride along). The former
# default ``unet2d_model`` (UNET2D_MODEL) is left out: the Space never runs it (6 MB less to upload).
_DATA_SUFFIXES = {"default_model": (".json", ".safetensors", ".md"), "model_cards": (".md",),
                  "space/template": (".py", ".md", ".txt"), "custom_pipeline": (".py",)}


def _ships(rel: Path) -> bool:
    """Whether the package file ``rel`` (relative to the package folder) belongs in the Space repository."""
    if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or rel.parts[0] == "unet2d_model":
        return False
    if rel.parts[0] == "default_model" and (len(rel.parts) > 3 or len(rel.parts) == 3
                                            and rel.parts[1] not in _model_components()):
        return False  # a pipeline folder's own layout only: its files and its components' files
    for folder, suffixes in _DATA_SUFFIXES.items():
        if rel.as_posix().startswith(folder + "/"):
            return rel.suffix in suffixes
    return rel.suffix == ".py"


def _model_components() -> set:
    """The component folders of the embedded default (``model_index.json``)."""
    import json

    index = json.loads((PACKAGE_DIR / "default_model" / "model_index.json").read_text())
    return {k for k in index if not k.startswith("_")}


def _copy_package(dest: Path) -> list:
    """Copy the package's shipped files (following the links of the source checkout) to ``dest``; returns what was
    left out that a careless copy would have taken along (for the log)."""
    import os

    left_out = []
    files = sorted(Path(root, name) for root, _, names in os.walk(PACKAGE_DIR, followlinks=True) for name in names)
    for path in files:
        rel = path.relative_to(PACKAGE_DIR)
        if not _ships(rel):
            if "__pycache__" not in rel.parts and rel.parts[0] != "unet2d_model":
                left_out.append(rel.as_posix())
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
    return left_out

__all__ = ["DEFAULT_PIPELINE_REPO", "SPACE_FILES", "TEMPLATE_DIR", "export_space", "push_space", "space_card",
           "space_requirements"]


def _check_repo_id(name: str, repo_id) -> str:
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")) \
            or any(c.isspace() for c in repo_id):
        raise ValueError(f"{name} must be a Hub repository id 'namespace/name', got {name}={repo_id!r}")
    return repo_id


def space_card(*, model_repo: Optional[str] = DEFAULT_PIPELINE_REPO):
    """The Space's ``README.md`` as a `huggingface_hub.SpaceCard`: the template's, with ``models:`` naming
    ``model_repo``.

    Args:
        model_repo (`str`, *optional*): the pipeline repository the Space's model comes from; `None` leaves
            ``models:`` out.

    Returns:
        `SpaceCard`: its ``data`` holds the validated YAML (``sdk``, ``sdk_version``, ``app_file``, ...).

    Raises:
        ValueError: ``model_repo`` is not ``namespace/name``, or the template's YAML is not a Gradio Space's.
    """
    from huggingface_hub import SpaceCard

    card = SpaceCard((TEMPLATE_DIR / "README.md").read_text(encoding="utf-8"))
    data = card.data
    if data.sdk != "gradio" or not data.sdk_version or data.app_file != "app.py" or not data.python_version:
        raise ValueError(f"the Space template's README.md must say sdk: gradio, sdk_version, app_file: app.py and "
                         f"python_version, got sdk={data.sdk!r}, sdk_version={data.sdk_version!r}, "
                         f"app_file={data.app_file!r}, python_version={data.python_version!r}")
    data.models = [_check_repo_id("model_repo", model_repo)] if model_repo is not None else None
    return card


def space_requirements() -> list:
    """The requirement lines of the Space's ``requirements.txt`` (comments and blank lines left out)."""
    lines = (TEMPLATE_DIR / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _write_space(folder: Path, model_repo: Optional[str]) -> None:
    for name in ("app.py", "requirements.txt"):
        shutil.copyfile(TEMPLATE_DIR / name, folder / name)
    space_card(model_repo=model_repo).save(folder / "README.md")
    # the package, following the links in the source checkout (model_cards/, space/template/, custom_pipeline/)
    left_out = _copy_package(folder / "dpdiffusion")
    if left_out:
        logger.warning("left %d file(s) of the package folder out of the Space (not part of the package): %s",
                       len(left_out), ", ".join(left_out[:10]) + (" ..." if len(left_out) > 10 else ""))
    from ..models.default import DEFAULT_MODEL

    if not (folder / "dpdiffusion" / Path(DEFAULT_MODEL).name / "model_index.json").is_file():
        raise ValueError(f"the embedded default model is not installed at {DEFAULT_MODEL}; the Space needs it (train "
                         "it with scripts/train_default_models.py --install)")


def export_space(out_dir, *, model_repo: Optional[str] = DEFAULT_PIPELINE_REPO, overwrite: bool = False) -> Path:
    """Write a complete Space repository to ``out_dir`` (see the module docstring for its files).

    Args:
        out_dir (`str` or `Path`): the folder to create; it must not exist, or be empty, unless ``overwrite``.
        model_repo (`str`, *optional*): the pipeline repository named in the README's ``models:``
            (default `DEFAULT_PIPELINE_REPO`, the embedded default's; `None` leaves it out). The Space runs the
            embedded default unless its ``DPDIFFUSION_SPACE_MODEL`` variable names another pipeline.
        overwrite (`bool`): replace an existing non-empty ``out_dir``.

    Returns:
        `Path`: ``out_dir``.

    Raises:
        ValueError: ``out_dir`` exists and is not an empty folder (without ``overwrite``); a bad ``model_repo``;
            the embedded default model is missing.
    """
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir must be a folder, got out_dir={str(out_dir)!r} (a file)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"out_dir={str(out_dir)!r} exists and is not empty; pass overwrite=True (--overwrite) to "
                         "replace it")
    write_folder_atomically(out, lambda tmp: _write_space(tmp, model_repo))
    logger.info("wrote the Space repository to %s", out)
    return out


def push_space(folder, repo_id: str, *, token: Optional[str] = None, private: Optional[bool] = None,
               endpoint: Optional[str] = None, commit_message: Optional[str] = None,
               hardware: Optional[str] = None, ignore_patterns: Sequence[str] = ("__pycache__/*", "*.pyc")):
    """Upload a folder written by `export_space` to the Space ``repo_id``.

    Creates the Space if needed (``create_repo(repo_type="space", space_sdk="gradio")``), then uploads every file
    of the folder in one commit (``upload_folder``).

    Args:
        folder (`str` or `Path`): the exported Space repository.
        repo_id (`str`): ``namespace/name`` of the Space.
        token (`str`, *optional*): Hub token with write access; default: ``$HF_TOKEN`` or the saved login.
        private (`bool`, *optional*): visibility of a new Space (default: the Hub's).
        endpoint (`str`, *optional*): the Hub's URL (default: ``$HF_ENDPOINT`` or huggingface.co).
        commit_message (`str`, *optional*): the commit's message.
        hardware (`str`, *optional*): hardware of a new Space (e.g. ``"zero-a10g"``, ``"t4-small"``).

    Returns:
        `CommitInfo`: the upload's commit.

    Raises:
        ValueError: a bad ``repo_id``, or ``folder`` is not an exported Space (a file of `SPACE_FILES` or the
            package ``dpdiffusion/`` is missing).
    """
    from huggingface_hub import HfApi

    _check_repo_id("repo_id", repo_id)
    folder = Path(folder)
    missing = [n for n in (*SPACE_FILES, "dpdiffusion/__init__.py") if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"folder={str(folder)!r} is not a Space written by export_space (missing {missing})")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True,
                    space_hardware=hardware)
    info = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(folder),
                             commit_message=commit_message or "Upload the dpdiffusion Space",
                             ignore_patterns=list(ignore_patterns))
    logger.info("pushed %s to the Space %s", folder, repo_id)
    return info
