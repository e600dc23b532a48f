"""``DPDiffusionPipeline`` on the Hub: ``push_to_hub`` with this project's card and custom-pipeline file, and the
loading of a pushed repository with this package's classes (no remote code)."""

from __future__ import annotations

import logging
from pathlib import Path

from .models.attribute_directions import AttributeDirections
from .models.diffae_encoder import DiffAESemanticEncoder
from .models.diffae_unet import DiffAEUNet2DModel
from .models.semantic_encoder import SemanticEncoder

logger = logging.getLogger(__name__)

__all__ = ["CUSTOM_PIPELINE_FILE", "CUSTOM_PIPELINE_NAME", "HUB_FILE_PATTERNS", "PipelineHubMixin",
           "check_safetensors_weights"]

# the diffusers custom-pipeline entry (the repository's pipelines/dp_diffusion/pipeline.py, shipped in the package)
# that `push_to_hub` uploads as ``pipeline.py``
CUSTOM_PIPELINE_NAME = "pipeline"
CUSTOM_PIPELINE_FILE = Path(__file__).resolve().parent / "custom_pipeline" / "pipeline.py"


class PipelineHubMixin:
    """``save_hub_folder`` and ``push_to_hub`` of ``DPDiffusionPipeline``."""

    def save_hub_folder(self, folder, *, repo_id: str, command: str | None = None, title: str | None = None) -> Path:
        """Write what `push_to_hub` uploads: the pipeline (``save_pretrained``, safetensors), this project's model card
        (``README.md`` from ``model_cards/dp_diffusion_pipeline.md``: privacy scope, neighbouring relation, public
        clip bounds, how to load), a component file per component of this package (``encoder/semantic_encoder.py``
        ...: a one-line re-export, named in ``model_index.json``, as diffusers needs for components of other
        libraries on the Hub) and the custom-pipeline file ``pipeline.py`` (``pipelines/dp_diffusion/pipeline.py``,
        which imports the installed package), so that both ``DPDiffusionPipeline.from_pretrained(repo_id)`` and
        ``DiffusionPipeline.from_pretrained(repo_id, custom_pipeline="pipeline", ...)`` (with remote code trusted)
        load the repository.

        Args:
            folder (`str` or `Path`): where to write (created; existing files of the same names are replaced).
            repo_id (`str`): the repository the card's "How to use" loads.
            command (`str`, *optional*): how the model was made, for the card (default: this process's argv).
            title (`str`, *optional*): the card's title.

        Returns:
            `Path`: ``folder``.
        """
        import json
        import shlex
        import shutil
        import sys

        from .models.pipeline_card import render_pipeline_card

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_pretrained(folder, safe_serialization=True)
        _hub_component_files(folder)
        shutil.copyfile(CUSTOM_PIPELINE_FILE, folder / f"{CUSTOM_PIPELINE_NAME}.py")
        state_file = folder / "training_state.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else None
        card = render_pipeline_card(folder, command=command or " ".join(shlex.quote(a) for a in sys.argv),
                                    training_state=state, repo_or_path=repo_id, title=title or repo_id.split("/")[-1],
                                    custom_pipeline=CUSTOM_PIPELINE_NAME)
        (folder / "README.md").write_text(card, encoding="utf-8")
        return folder

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, safe_serialization: bool = True,
                    variant: str | None = None, *, command: str | None = None, title: str | None = None,
                    endpoint: str | None = None, **kwargs):
        """Upload the pipeline with this project's model card and its custom-pipeline file (`save_hub_folder`).

        Replaces diffusers' ``push_to_hub``, which uploads a generic card and no custom-pipeline file.

        Args:
            repo_id (`str`): ``namespace/name`` of the model repository (created if needed).
            commit_message (`str`, *optional*): default ``"Upload DPDiffusionPipeline"``.
            private (`bool`, *optional*): visibility of a new repository (default: the Hub's).
            token (`str`, *optional*): Hub token with write access (default: ``$HF_TOKEN`` or the saved login).
            create_pr (`bool`): open a pull request instead of committing to ``main``.
            safe_serialization (`bool`): must be `True` (the pipeline's weights are saved as safetensors only).
            variant (`str`, *optional*): not supported (must be `None`).
            command (`str`, *optional*), title (`str`, *optional*): for the model card.
            endpoint (`str`, *optional*): the Hub's URL (default ``$HF_ENDPOINT`` or huggingface.co).

        Returns:
            `CommitInfo`: the upload's commit (a `str`: its URL).

        Raises:
            ValueError: a bad ``repo_id``, ``safe_serialization=False``, a ``variant`` or an unknown argument.
        """
        import tempfile

        from huggingface_hub import HfApi

        if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"repo_id must be 'namespace/name', got repo_id={repo_id!r}")
        if safe_serialization is not True:
            raise ValueError(f"safe_serialization must be True (weights are pushed as safetensors only), got "
                             f"safe_serialization={safe_serialization!r}")
        if variant is not None:
            raise ValueError(f"variant is not supported by DPDiffusionPipeline.push_to_hub, got variant={variant!r}")
        if kwargs:
            raise ValueError(f"unknown arguments to push_to_hub: {sorted(kwargs)}")
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as tmp:
            self.save_hub_folder(tmp, repo_id=repo_id, command=command, title=title)
            info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=tmp, create_pr=create_pr,
                                     commit_message=commit_message or "Upload DPDiffusionPipeline")
        logger.info("pushed the pipeline to %s", repo_id)
        return info


HUB_FILE_PATTERNS = ["model_index.json", "*/config.json", "*/scheduler_config.json", "*/*.safetensors", "*/*.py",
                     f"{CUSTOM_PIPELINE_NAME}.py", "README.md", "training_state.json"]
_COMPONENT_FILE_HEADER = (
    '"""A component of a DPDiffusionPipeline repository: re-exports the class from the installed ``dpdiffusion``\n'
    'package (``pip install dpdiffusion``), so that diffusers finds it on the Hub."""\n\n')


def _component_classes() -> dict:
    """This package's component classes by name (what a pushed ``model_index.json`` may name)."""
    return {c.__name__: c for c in (AttributeDirections, SemanticEncoder, DiffAESemanticEncoder, DiffAEUNet2DModel)}


def _hub_component_files(folder: Path) -> None:
    """Rewrite a saved pipeline's ``model_index.json`` so that each component of this package is named by a file
    in its folder (``encoder/semantic_encoder.py`` re-exporting ``SemanticEncoder``), diffusers' convention for
    custom components on the Hub; diffusers' own classes are left as they are."""
    import json

    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    for component, value in index.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
            continue
        library, class_name = value
        if not library.startswith("dpdiffusion.") or class_name not in _component_classes():
            continue
        stem = library.rsplit(".", 1)[-1]
        (folder / component / f"{stem}.py").write_text(
            f"{_COMPONENT_FILE_HEADER}from {library} import {class_name}  # noqa: F401\n\n"
            f"__all__ = [{class_name!r}]\n", encoding="utf-8")
        index[component] = [stem, class_name]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _download_repo(repo_id: str, kwargs: dict) -> str:
    """``snapshot_download`` of what a pipeline needs (no pickled weights unless ``use_safetensors=False`` was passed),
    taking the download arguments out of ``kwargs``."""
    from huggingface_hub import snapshot_download

    options = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only", "force_download",
                                          "proxies") if k in kwargs}
    if options.pop("proxies", None) is not None:
        logger.warning("proxies are not passed to the Hub download; set HTTPS_PROXY instead")
    patterns = HUB_FILE_PATTERNS + (PICKLE_FILE_PATTERNS if kwargs.get("use_safetensors") is False else [])
    return snapshot_download(repo_id, allow_patterns=patterns, **options)


PICKLE_FILE_PATTERNS = ["*/*.bin"]  # diffusers' and transformers' pickled weights (diffusion_pytorch_model.bin ...)


def check_safetensors_weights(folder: Path, kwargs: dict, *, downloaded: bool = False) -> None:
    """With ``use_safetensors=True`` (``DPDiffusionPipeline.from_pretrained``'s default), refuse a pipeline folder
    whose component holds pickled weights and no safetensors, saying so and how to load it, instead of diffusers'
    bare "no file named diffusion_pytorch_model.safetensors".

    Args:
        folder (`Path`): the pipeline folder (its ``model_index.json`` names the components).
        kwargs (`dict`): ``from_pretrained``'s arguments (``use_safetensors``; a component passed in is not read).
        downloaded (`bool`): the folder is a Hub download (which fetched no pickles): a model component without any
            weights file is then named too.

    Raises:
        OSError: (as diffusers raises for missing weights) naming the component, its pickled files and
            ``use_safetensors=False``.
    """
    import json

    index_file = folder / "model_index.json"
    if kwargs.get("use_safetensors") is not True or not index_file.is_file():
        return
    index = json.loads(index_file.read_text())
    for name, value in index.items():
        sub = folder / name
        if name.startswith("_") or name in kwargs or not isinstance(value, list) or not sub.is_dir():
            continue
        if any(sub.glob("*.safetensors")):
            continue
        pickles = sorted(p.name for p in sub.glob("*.bin"))
        if pickles:
            raise OSError(
                f"{sub} holds pickled weights ({', '.join(pickles)}) and no .safetensors file. "
                "DPDiffusionPipeline.from_pretrained loads safetensors weights only unless told otherwise, because "
                "loading a pickled .bin file can execute arbitrary code. If you trust this checkpoint, pass "
                "use_safetensors=False to load it (and convert it once with "
                "pipe.save_pretrained(folder, safe_serialization=True)).")
        if downloaded and (sub / "config.json").is_file():
            raise OSError(
                f"component {name!r} of the downloaded repository has no .safetensors weights (only safetensors are "
                "downloaded by default, because loading a pickled .bin file can execute arbitrary code). If the "
                "repository holds pickled .bin weights and you trust it, use_safetensors=False downloads and loads "
                "them.")


def _from_hub_folder(cls, folder: Path, kwargs: dict):
    """The pipeline of a folder written by `push_to_hub` (its ``model_index.json`` names this package's components
    by re-export files), loaded with this package's classes, no remote code; `None` for any other folder.

    Raises:
        ValueError: an argument other than ``dtype`` (or ``torch_dtype``; a dtype or diffusers' per-component dict) /
            ``use_safetensors`` / a component, or a component of a library other than diffusers and this package.
    """
    import json

    import diffusers

    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return None
    index = json.loads(index_file.read_text())
    entries = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
    classes = _component_classes()
    if not any(c in classes and (folder / k / f"{lib}.py").is_file() for k, (lib, c) in entries.items()):
        return None
    dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)  # diffusers' new and old name
    if dtype is not None and torch_dtype is not None:
        raise ValueError("pass dtype only (torch_dtype is its deprecated name in diffusers), not both")
    dtype = dtype if dtype is not None else torch_dtype
    use_safetensors = kwargs.pop("use_safetensors", True)
    components = {k: kwargs.pop(k) for k in list(kwargs) if k in entries}
    if kwargs:
        raise ValueError(f"DPDiffusionPipeline.from_pretrained of a pushed repository takes dtype (or torch_dtype), "
                         f"use_safetensors and components; got {sorted(kwargs)}")
    for name, (library, class_name) in entries.items():
        if name in components:
            continue
        if class_name in classes and (folder / name / f"{library}.py").is_file():
            klass = classes[class_name]
        elif library == "diffusers" and hasattr(diffusers, class_name):
            klass = getattr(diffusers, class_name)
        else:
            raise ValueError(f"component {name!r} of {folder}: {library}.{class_name} is neither a diffusers class "
                             f"nor one of this package's ({sorted(classes)})")
        if issubclass(klass, diffusers.SchedulerMixin):
            components[name] = klass.from_pretrained(folder / name)
        else:
            wanted = dtype.get(name, dtype.get("default")) if isinstance(dtype, dict) else dtype  # diffusers' dict
            options = {"dtype": wanted} if wanted is not None else {}
            components[name] = klass.from_pretrained(folder / name, use_safetensors=use_safetensors, **options)
    pipe = cls(**components, training_domain=index.get("training_domain"))  # None: not declared
    pipe.register_to_config(_name_or_path=str(folder))
    return pipe
