"""The dpdiffusion Space: a person looks at a protected face and decides how much privacy is enough.

The loop: load a face (upload, or a SynthFaces sample); choose the protected attributes and their weights; the app
releases a protected image at a starting epsilon and shows it next to the original with its privacy figures. The
person answers "more privacy", "more detail" or "accept"; an `EpsilonController` (``controller.py``) picks the next
epsilon and the app releases again. Every release is charged to the face's `PrivacyLedger` budget *before* its
image is shown; a release that would exceed the budget is refused with the reason and charges nothing.

A face is a picture (``subjects.py``): its ledger subject is a keyed hash (HMAC-SHA256, server-side secret next to
the ledger) of its coarse colour layout, so the same picture in another session, after "accept", re-encoded or
resized spends the same budget. The Space keeps one ledger per Space folder; its budget and delta are fixed when it
is created (restarting with another budget is refused). The privacy noise always comes from the OS CSPRNG.

Privacy of the upload: read and shrunk in the browser, sent as a data URL inside each request, kept only in the
session's memory, never written to disk or logged (``images.py``). Stored: each judgement with the *protected*
image in a local ``imagefolder`` dataset, optionally pushed to the Hub (``feedback.py``).

Files (the package ``dpdiffusion.space``, so that the app ships inside the wheel): ``config.py`` (settings, env vars), ``images.py`` (uploads), ``subjects.py`` (face -> subject, secret,
ledger), ``feedback.py`` (the feedback dataset), ``session.py`` (the release logic), ``report.py`` (figures),
``layout.py`` (the Gradio page), ``controller.py`` (the epsilon search), ``hardware.py`` (CUDA / ZeroGPU / persistent storage),
``export.py`` (a ready-to-push Space repository); this file builds and runs the app.

Run locally with ``dpdiffusion space`` (or ``python -m dpdiffusion.space.app --port 7860``); write a Space
repository with ``dpdiffusion space --export DIR`` (see `export_space`). Environment variables: see
``config.py`` and README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Optional

from ..models.steps import DEFAULT_NUM_INFERENCE_STEPS
from .config import (
    ENV_BUDGET, ENV_DIR, ENV_FEEDBACK_REPO, ENV_MODEL, ENV_START, ENV_STEPS, ENV_THREADS, SESSION_TTL_S, SpaceConfig,
    default_space_dir, env_float, load_pipeline)
from .config import hub_token as _hub_token
from .controller import EpsilonController
from .feedback import FeedbackLog, load_feedback_dataset
from .images import (
    BROWSER_SIDE, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MIN_UPLOAD_SIDE, decode_original, image_to_data_url,
    synthfaces_samples, upscale_for_display)
from .layout import build_page
from .session import VERDICT_LABELS, DPSpace, NoiseSourceError, SubjectSession, View
from .subjects import (
    LEDGER_FILE, SECRET_FILE, SubjectKeyer, face_features, load_or_create_secret, open_space_ledger)

logger = logging.getLogger(__name__)

__all__ = [
    "BROWSER_SIDE", "DPSpace", "ENV_BUDGET", "ENV_DIR", "ENV_FEEDBACK_REPO", "ENV_MODEL", "ENV_START", "ENV_STEPS",
    "ENV_THREADS", "EpsilonController", "FeedbackLog", "LEDGER_FILE", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS",
    "MIN_UPLOAD_SIDE", "NoiseSourceError", "SECRET_FILE", "SESSION_TTL_S", "SpaceConfig", "SubjectKeyer",
    "SubjectSession", "VERDICT_LABELS", "View", "build_demo", "decode_original", "default_space_dir",
    "face_features", "image_to_data_url", "load_feedback_dataset", "load_or_create_secret", "load_pipeline", "main",
    "open_space_ledger", "synthfaces_samples", "upscale_for_display",
]


def _resolve_dirs(ledger_dir, feedback_dir) -> tuple:
    base = default_space_dir()
    ledger_dir = Path(ledger_dir) if ledger_dir is not None else base / "ledger"
    feedback_dir = Path(feedback_dir) if feedback_dir is not None else base / "feedback"
    lr, fr = ledger_dir.resolve(), feedback_dir.resolve()
    if lr == fr or fr in lr.parents:
        raise ValueError(f"ledger_dir ({ledger_dir}) must not be inside feedback_dir ({feedback_dir}): the ledger "
                         "folder holds the subject secret, which must never be part of the feedback dataset")
    return ledger_dir, feedback_dir


def build_demo(pipe=None, *, ledger_dir=None, feedback_dir=None, budget_epsilon: Optional[float] = None,
               delta: Optional[float] = None, start_epsilon: Optional[float] = None,
               num_inference_steps: Optional[int] = None, feedback_repo: Optional[str] = None,
               hub_token: Optional[str] = None, model_name: Optional[str] = None, secure_mode: bool = True,
               **config_kwargs):
    """Build the Space's page.

    Args:
        pipe (`DPDiffusionPipeline`, *optional*): the model; default: `load_pipeline()` (``$DPDIFFUSION_SPACE_MODEL``
            or the embedded ``DEFAULT_MODEL``).
        ledger_dir, feedback_dir (`str` or `Path`, *optional*): where the Space's one ledger (``ledger.sqlite``, with
            the subject secret ``subject_key.bin`` next to it) and the feedback dataset live; default: under
            `default_space_dir()`. The ledger folder must not lie inside the feedback folder.
        budget_epsilon (`float`, *optional*): per-face budget (``$DPDIFFUSION_SPACE_BUDGET_EPSILON``); fixed when the
            ledger is created: unset, an existing ledger's budget is used (a new one gets 5); set to another value
            than the existing ledger's, the Space refuses to start.
        delta (`float`, *optional*): delta of every release and of the ledger (same rule; a new ledger gets 1e-5).
        start_epsilon (`float`, *optional*): default first epsilon (``$DPDIFFUSION_SPACE_START_EPSILON`` or 1).
        num_inference_steps (`int`, *optional*): DDIM steps (``$DPDIFFUSION_SPACE_STEPS`` or
            ``DEFAULT_NUM_INFERENCE_STEPS``, 5).
        feedback_repo (`str`, *optional*): Hub dataset repo for the feedback (``$DPDIFFUSION_FEEDBACK_REPO``);
            pushed only when a token exists (``hub_token``, ``$HF_TOKEN`` or a saved login).
        model_name (`str`, *optional*): recorded with the feedback.
        secure_mode (`bool`): must be `True` (the Space's privacy noise always comes from the OS CSPRNG).
        **config_kwargs: other `SpaceConfig` fields.

    Returns:
        `gr.Blocks`: the page; its ``dp_space`` attribute is the `DPSpace` behind it.

    Raises:
        ValueError: ``secure_mode=False``; a budget or delta that differs from the Space ledger's (the message names
            the argument or environment variable); bad settings.
    """
    if secure_mode is not True:
        raise ValueError(f"secure_mode must be True in the Space (privacy noise from the OS CSPRNG), got "
                         f"secure_mode={secure_mode!r}")
    if pipe is None:
        pipe, loaded = load_pipeline()
        pipe.set_progress_bar_config(leave=False)  # our own pipeline; an injected one keeps its settings
        model_name = model_name or loaded
    ledger_dir, feedback_dir = _resolve_dirs(ledger_dir, feedback_dir)
    budget_name = "budget_epsilon" if budget_epsilon is not None else ENV_BUDGET
    budget = budget_epsilon if budget_epsilon is not None else env_float(ENV_BUDGET, None)
    ledger = open_space_ledger(ledger_dir, budget_epsilon=budget, delta=delta, budget_name=budget_name)
    subjects = SubjectKeyer(load_or_create_secret(ledger_dir))
    config = SpaceConfig(
        budget_epsilon=ledger.budget_epsilon, delta=ledger.delta,
        start_epsilon=start_epsilon if start_epsilon is not None else env_float(ENV_START, 1.0),
        num_inference_steps=num_inference_steps if num_inference_steps is not None
        else int(env_float(ENV_STEPS, DEFAULT_NUM_INFERENCE_STEPS)), **config_kwargs)
    repo = feedback_repo if feedback_repo is not None else os.environ.get(ENV_FEEDBACK_REPO)
    token = (hub_token or _hub_token()) if repo else None
    feedback = FeedbackLog(feedback_dir, repo_id=repo, token=token)
    space = DPSpace(pipe, ledger=ledger, feedback=feedback, config=config, model_name=model_name or "custom",
                    subjects=subjects)
    hub_note = f", pushed to the Hub dataset `{repo}`" if feedback.scheduler is not None else " on the server"
    demo = build_page(space, hub_note=hub_note)
    demo.dp_space = space
    return demo


def main(argv=None) -> None:
    """``python app.py [--port P] [--host H] [--model M]``: serve the Space."""
    parser = argparse.ArgumentParser(description="The dpdiffusion Space (Gradio app).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, or $GRADIO_SERVER_PORT).")
    parser.add_argument("--host", default=None, help="Interface to bind (default: Gradio's).")
    parser.add_argument("--model", default=None, help=f"Pipeline folder or Hub repo id (default: ${ENV_MODEL} "
                                                      "or the embedded default).")
    parser.add_argument("--budget-epsilon", type=float, default=None,
                        help=f"Per-face epsilon budget (default: ${ENV_BUDGET}, else the Space ledger's, else 5); "
                             "cannot change once the Space's ledger exists.")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.environ.get(ENV_THREADS):  # e.g. 1 where other work shares the cores (OpenMP spinning is costly)
        import torch

        torch.set_num_threads(int(os.environ[ENV_THREADS]))
    pipe, model_name = load_pipeline(ns.model)
    build_demo(pipe, model_name=model_name, budget_epsilon=ns.budget_epsilon).launch(server_port=ns.port,
                                                                                     server_name=ns.host)


if __name__ == "__main__":
    main()
