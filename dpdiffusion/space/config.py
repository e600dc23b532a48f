"""The Space's settings: `SpaceConfig`, its environment variables, where its files live, and the model loader.

Environment variables (read by `dpdiffusion.space.app`'s `build_demo` and `main`):

| variable | meaning |
|---|---|
| ``DPDIFFUSION_SPACE_MODEL`` | pipeline folder or Hub repo id (default: the embedded ``DEFAULT_MODEL``) |
| ``DPDIFFUSION_SPACE_DIR`` | the Space folder: its one ledger, the subject secret and the feedback |
| ``DPDIFFUSION_SPACE_NEW_LEDGER`` | ``1``: start over where the ledger or secret is missing or wrong (``store.py``) |
| ``DPDIFFUSION_FEEDBACK_REPO`` | Hub dataset repo for the feedback (needs ``HF_TOKEN`` or a saved token) |
| ``DPDIFFUSION_SPACE_BUDGET_EPSILON`` | epsilon budget per face; fixed once the Space's ledger exists |
| ``DPDIFFUSION_SPACE_START_EPSILON`` | default first epsilon |
| ``DPDIFFUSION_SPACE_STEPS`` | DDIM steps per release |
| ``DPDIFFUSION_SPACE_TORCH_THREADS`` | torch threads |
| ``DPDIFFUSION_SPACE_DEVICE`` | ``cpu`` / ``cuda`` (default: CUDA when the Space has a GPU) |
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..models.steps import DEFAULT_NUM_INFERENCE_STEPS
from .hardware import persistent_storage, select_device

logger = logging.getLogger(__name__)

ENV_MODEL = "DPDIFFUSION_SPACE_MODEL"
ENV_DIR = "DPDIFFUSION_SPACE_DIR"
ENV_FEEDBACK_REPO = "DPDIFFUSION_FEEDBACK_REPO"
ENV_BUDGET = "DPDIFFUSION_SPACE_BUDGET_EPSILON"
ENV_START = "DPDIFFUSION_SPACE_START_EPSILON"
ENV_STEPS = "DPDIFFUSION_SPACE_STEPS"
ENV_THREADS = "DPDIFFUSION_SPACE_TORCH_THREADS"
ENV_NEW_LEDGER = "DPDIFFUSION_SPACE_NEW_LEDGER"
EMBEDDED_DEFAULT_NAME = "embedded default (SynthFaces)"

SESSION_TTL_S = 2 * 3600  # the session's state (the face mode's square) is dropped this long after its last answer
DEFAULT_BUDGET_EPSILON = 5.0  # the budget of a new Space's ledger when none is configured
DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class SpaceConfig:
    """Settings of one app instance (shared by all its users).

    Args:
        budget_epsilon (`float`): total epsilon each face (subject) may spend over all of its releases, in all
            sessions; must equal the budget stored in the Space's ledger.
        delta (`float`): delta of every release and of the ledger's accounting.
        start_epsilon (`float`): epsilon of a session's first release (the person may change it).
        num_inference_steps (`int`): DDIM steps of each release.
        step_factor (`float`), min_epsilon (`float`), max_epsilon (`float`): the `EpsilonController`'s settings.
        secure_mode (`bool`): must be `True`: the Space draws its privacy noise from the OS CSPRNG, always. It is
            never a research tool; seeded (reproducible) noise has no place in it.
        num_samples (`int`), sample_seed (`int`), sample_size (`int`): the SynthFaces samples offered.
        max_concurrent_releases (`int`): releases generated at once; the rest wait in the queue (with progress).
        allow_domain_mismatch (`bool`): run the photo mode with a model that knows only synthetic faces
            (`synthetic_domain`), to test the plumbing (``--allow-domain-mismatch`` at launch); by default such a
            Space refuses photos with the model's domain and how to serve real faces (`photo_domain_refusal`).

    Raises:
        ValueError: a setting out of range, or ``secure_mode=False``.
    """

    budget_epsilon: float = DEFAULT_BUDGET_EPSILON
    delta: float = DEFAULT_DELTA
    start_epsilon: float = 1.0
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS
    step_factor: float = 2.0
    min_epsilon: float = 0.01
    max_epsilon: float = 100.0
    secure_mode: bool = True
    num_samples: int = 12
    sample_seed: int = 2024
    sample_size: int = 128
    max_concurrent_releases: int = 1
    allow_domain_mismatch: bool = False

    def __post_init__(self):
        if self.secure_mode is not True:
            raise ValueError(f"secure_mode must be True in the Space (its privacy noise always comes from the OS "
                             f"CSPRNG; seeded noise is for research with the library), got "
                             f"secure_mode={self.secure_mode!r}")
        if not 0.0 < self.budget_epsilon < math.inf:
            raise ValueError(f"budget_epsilon must be finite and > 0, got budget_epsilon={self.budget_epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got delta={self.delta}")
        if not self.min_epsilon <= self.start_epsilon <= self.max_epsilon:
            raise ValueError(f"start_epsilon must be in [{self.min_epsilon}, {self.max_epsilon}], "
                             f"got start_epsilon={self.start_epsilon}")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an int >= 1, got {self.num_inference_steps!r}")
        if not isinstance(self.allow_domain_mismatch, bool):
            raise ValueError(f"allow_domain_mismatch must be True or False, got "
                             f"allow_domain_mismatch={self.allow_domain_mismatch!r}")
        if self.max_concurrent_releases < 1:
            raise ValueError(f"max_concurrent_releases must be >= 1, got {self.max_concurrent_releases}")


def default_space_dir() -> Path:
    """``$DPDIFFUSION_SPACE_DIR``, else ``/data/dpdiffusion-space`` on a Space with persistent storage, else
    ``~/.cache/dpdiffusion/space``."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    storage = persistent_storage()
    if storage is not None:
        return storage / "dpdiffusion-space"
    return Path.home() / ".cache" / "dpdiffusion" / "space"


def env_float(name: str, default: Optional[float]) -> Optional[float]:
    """The float in environment variable ``name``, else ``default``.

    Raises:
        ValueError: the variable is set but is not a number (the message names the variable).
    """
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {name}={raw!r}") from None


def env_flag(name: str) -> bool:
    """Whether environment variable ``name`` is set to a true value (``1``, ``true``, ``yes``, ``on``).

    Raises:
        ValueError: the variable is set to something else than a true or false value (the message names it).
    """
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be 1 or 0 (true or false), got {name}={os.environ[name]!r}")


def public_model_name(model: Optional[str]) -> str:
    """How the page and the feedback name the model: a Hub repo id as it is, an embedded model as
    ``"embedded default (SynthFaces)"`` (or its card title), a local folder by its model card's title (else
    ``"a local pipeline"``); never a path on the server.

    Args:
        model (`str`, *optional*): what the pipeline was loaded from (a folder or a Hub repo id), or a name.
    """
    from ..models.default import DEFAULT_MODEL, EMBEDDED_MODELS

    if not model:
        return "custom"
    model = str(model)
    try:
        here = Path(model).expanduser().resolve()
    except (OSError, RuntimeError):  # pragma: no cover - an unresolvable name is not a local path
        here = None
    if here is not None and here == Path(DEFAULT_MODEL).resolve():
        return EMBEDDED_DEFAULT_NAME
    for folder, _, title, _ in EMBEDDED_MODELS.values():
        if here is not None and here == Path(folder).resolve():
            return f"embedded: {title}"
    looks_local = (os.path.isabs(model) or model.startswith(("~", ".")) or model.count("/") > 1 or "\\" in model
                   or (here is not None and here.exists()))
    if not looks_local:
        return model  # a Hub repo id ("namespace/name") or a name given by the caller
    card = here / "README.md" if here is not None else None
    if card is not None and card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                if title and "/" not in title and "\\" not in title:
                    return title
    return "a local pipeline"


def synthetic_domain(pipe):
    """The training domain of ``pipe`` when it knows only synthetic faces (the embedded default: SynthFaces, 32 px,
    cartoons), else `None`: the Space then shows a banner saying so and how to serve real faces.

    The one place the Space decides this: it reads the domain the model declares (``pipe.training_domain``, from its
    ``model_index.json``; `dpdiffusion.models.training_domain`). A model that declares none (``"unknown"``) gets no
    banner.

    Returns:
        `TrainingDomain` or `None`.
    """
    domain = getattr(pipe, "training_domain", None)
    return domain if getattr(domain, "synthetic", False) is True else None


def photo_domain_refusal(pipe, config: SpaceConfig) -> Optional[str]:
    """The photo mode's refusal (Markdown) while the Space serves a model that knows only synthetic faces and was not
    launched with ``--allow-domain-mismatch``: what the model is and the two commands that serve real faces; `None`
    when photos may go through."""
    from ..models.training_domain import REAL_FACE_CHECKPOINT, photo_refusal_message

    domain = synthetic_domain(pipe)
    if domain is None or config.allow_domain_mismatch:
        return None
    return photo_refusal_message(domain, what="This photo", markdown=True,
                                 opt_in="`--allow-domain-mismatch` when the Space is started "
                                        "(`dpdiffusion space --allow-domain-mismatch`)",
                                 use_command=f"dpdiffusion space --model {REAL_FACE_CHECKPOINT}")


def hub_token() -> Optional[str]:
    """``$HF_TOKEN``, else the token saved by ``huggingface-cli login``, else `None`."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # pragma: no cover - no token store
        return None


def load_pipeline(model: Optional[str] = None, *, device: Optional[str] = None):
    """The pipeline named by ``model``, ``$DPDIFFUSION_SPACE_MODEL``, or the embedded ``DEFAULT_MODEL``, on the
    Space's device (`hardware.select_device`: CUDA when the Space has a GPU, else the CPU).

    Returns:
        `tuple`: ``(pipe, model_name)``, the name as `public_model_name` gives it (never a path on the server).

    Raises:
        ValueError: no model named and the embedded default is not installed.
        OSError: the model has no safetensors weights (pickled weights are never loaded).
    """
    from .. import DPDiffusionPipeline
    from ..models.default import DEFAULT_MODEL, default_model_available

    model = model or os.environ.get(ENV_MODEL)
    if not model:
        if not default_model_available():
            raise ValueError(f"the embedded default model is not installed at {DEFAULT_MODEL}; train it with "
                             f"scripts/train_default_models.py --install or set {ENV_MODEL} to a pipeline")
        model = DEFAULT_MODEL
    pipe = DPDiffusionPipeline.from_pretrained(model, use_safetensors=True)  # never unpickle weights
    device = select_device(device)
    if device != "cpu":
        pipe = pipe.to(device)  # on ZeroGPU, `spaces` defers the move until a spaces.GPU call holds the GPU
    logger.info("the Space's pipeline runs on %s", device)
    return pipe, public_model_name(model)
