"""The dpdiffusion Space: a person looks at a protected face and decides how much privacy is enough.

The loop: load a face (upload, or a SynthFaces sample); choose the protected attributes and their weights; the app
releases a protected image at a starting epsilon and shows it next to the original with its privacy figures. The
person answers "more privacy", "more detail" or "accept"; an `EpsilonController` (``controller.py``) picks the next
epsilon and the app releases again. Every release is charged to the face's `PrivacyLedger` budget *before* its
image is shown; a release that would not fit is refused and charges nothing. The photo mode (``photo.py``) protects
every face of a photo of any size and pastes them back.

A face is keyed, not named (``subjects.py``): its ledger subjects are keyed hashes (HMAC-SHA256, server-side secret
next to the ledger) of the picture's coarse colour layout and of each face found in it, aligned the same way in both
modes, so the same face in another session, after "accept", re-encoded, resized or in the other mode spends the same
budget. The Space keeps one ledger per Space folder; its budget and delta are fixed when it is created (restarting
with another budget is refused), and it does not start where its ledger or secret has gone missing or the secret is
not the ledger's (``store.py``: a key check in the ledger and in a marker next to it; ``new_ledger`` starts over on
purpose). The privacy noise always comes from the OS CSPRNG.

What leaves the server (the threat model is docs/threat-model.md): an upload is read and shrunk in the browser and
sent inside the request, held in memory while it is answered (the face mode keeps its centre square in the session's
state until the tab closes) and never written to a file, a file route or a log (``images.py``; Gradio's own copies,
routes and monitoring are closed off in ``layout.py``); the photo mode answers with a data URL too. A session is told
its own releases and their composition, never what other sessions spent on a face (``session.py``). Stored: each
judgement with the *protected* image and this session's figures in a local ``imagefolder`` dataset, optionally pushed
to the Hub (``feedback.py``); files 0600 in 0700 folders. The model is named by its repo id or card title, never by a
path on the server.

Files (the package ``dpdiffusion.space``, so that the app ships inside the wheel): ``config.py`` (settings, env
vars), ``images.py`` (uploads), ``subjects.py`` (face -> subjects), ``store.py`` (the ledger, the secret, file modes,
startup checks), ``feedback.py`` (the feedback dataset), ``session.py`` (the release logic), ``photo.py`` (the photo
mode), ``report.py`` (figures), ``layout.py`` (the Gradio page), ``controller.py`` (the epsilon search),
``hardware.py`` (CUDA / ZeroGPU / persistent storage), ``export.py`` (a ready-to-push Space repository); this file
builds and runs the app.

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
    ENV_BUDGET, ENV_DIR, ENV_FEEDBACK_REPO, ENV_MODEL, ENV_NEW_LEDGER, ENV_START, ENV_STEPS, ENV_THREADS,
    SESSION_TTL_S, SpaceConfig, default_space_dir, env_flag, env_float, load_pipeline, public_model_name)
from .config import hub_token as _hub_token
from .controller import EpsilonController
from .feedback import FeedbackLog, load_feedback_dataset
from .images import (
    FACE_SIDE, MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, MIN_UPLOAD_SIDE, PHOTO_SIDE, decode_original, decode_photo,
    image_to_data_url, synthfaces_samples, upscale_for_display)
from .layout import build_page
from .session import VERDICT_LABELS, DPSpace, NoiseSourceError, ReleaseRefused, SubjectSession, View
from .store import LEDGER_FILE, SECRET_FILE, load_or_create_secret, open_space_ledger, open_space_store
from .face_identity import FaceIdentityKeyer, open_space_keyer
from .subjects import SubjectKeyer, face_features

logger = logging.getLogger(__name__)

__all__ = [
    "DPSpace", "ENV_BUDGET", "ENV_DIR", "ENV_FEEDBACK_REPO", "ENV_MODEL", "ENV_NEW_LEDGER", "ENV_START",
    "ENV_STEPS", "ENV_THREADS", "EpsilonController", "FACE_SIDE", "FaceIdentityKeyer", "FeedbackLog", "LEDGER_FILE",
    "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "MIN_UPLOAD_SIDE", "NoiseSourceError", "PHOTO_SIDE", "ReleaseRefused",
    "SECRET_FILE", "SESSION_TTL_S", "SpaceConfig", "SubjectKeyer", "SubjectSession", "VERDICT_LABELS", "View",
    "build_demo", "decode_original", "decode_photo", "default_space_dir", "face_features", "image_to_data_url",
    "load_feedback_dataset", "load_or_create_secret", "load_pipeline", "main", "open_space_ledger",
    "open_space_store", "public_model_name", "synthfaces_samples", "upscale_for_display",
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
               new_ledger: Optional[bool] = None, **config_kwargs):
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
        model_name (`str`, *optional*): shown on the page and recorded with the feedback, as `public_model_name`
            gives it (a path on the server becomes the model card's title).
        secure_mode (`bool`): must be `True` (the Space's privacy noise always comes from the OS CSPRNG).
        new_ledger (`bool`, *optional*): start a new ledger and subject secret where one of them, or both, is
            missing (the Space ran here before), or the secret is not the ledger's (key check); default
            ``$DPDIFFUSION_SPACE_NEW_LEDGER``. Without it such a Space refuses to start (`store.open_space_store`);
            with both present and matching it changes nothing.
        **config_kwargs: other `SpaceConfig` fields.

    Returns:
        `gr.Blocks`: the page; its ``dp_space`` attribute is the `DPSpace` behind it.

    Raises:
        ValueError: ``secure_mode=False``; a budget or delta that differs from the Space ledger's (the message names
            the argument or environment variable); the ledger or its secret is missing where the Space ran before,
            or the secret is not the ledger's or the pair not the Space folder's (without ``new_ledger``); bad
            settings.
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
    new_ledger_name = ("new_ledger=True" if new_ledger else
                       f"`dpdiffusion space --new-ledger`, {ENV_NEW_LEDGER}=1 or build_demo(new_ledger=True)")
    new_ledger = bool(new_ledger) if new_ledger is not None else env_flag(ENV_NEW_LEDGER)
    ledger, secret = open_space_store(ledger_dir, feedback_dir, budget_epsilon=budget, delta=delta,
                                      budget_name=budget_name, new_ledger=new_ledger, new_ledger_name=new_ledger_name)
    subjects = open_space_keyer(ledger_dir, secret, ledger=ledger, new_index=new_ledger)
    config = SpaceConfig(
        budget_epsilon=ledger.budget_epsilon, delta=ledger.delta,
        start_epsilon=start_epsilon if start_epsilon is not None else env_float(ENV_START, 1.0),
        num_inference_steps=num_inference_steps if num_inference_steps is not None
        else int(env_float(ENV_STEPS, DEFAULT_NUM_INFERENCE_STEPS)), **config_kwargs)
    repo = feedback_repo if feedback_repo is not None else os.environ.get(ENV_FEEDBACK_REPO)
    token = (hub_token or _hub_token()) if repo else None
    feedback = FeedbackLog(feedback_dir, repo_id=repo, token=token)
    space = DPSpace(pipe, ledger=ledger, feedback=feedback, config=config,
                    model_name=public_model_name(model_name), subjects=subjects)
    hub_note = f", pushed to the Hub dataset `{repo}`" if feedback.scheduler is not None else " on the server"
    demo = build_page(space, hub_note=hub_note)
    demo.dp_space = space
    return demo


def main(argv=None) -> None:
    """``python app.py [--port P] [--host H] [--model M] [--budget-epsilon E] [--new-ledger]
    [--allow-domain-mismatch]``: serve the Space.

    Sets the process's umask to 077 first: every file and folder the server creates, Gradio's included, is its
    user's only."""
    parser = argparse.ArgumentParser(description="The dpdiffusion Space (Gradio app).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, or $GRADIO_SERVER_PORT).")
    parser.add_argument("--host", default=None, help="Interface to bind (default: Gradio's).")
    parser.add_argument("--model", default=None, help=f"Pipeline folder or Hub repo id (default: ${ENV_MODEL} "
                                                      "or the embedded default).")
    parser.add_argument("--budget-epsilon", type=float, default=None,
                        help=f"Per-face epsilon budget (default: ${ENV_BUDGET}, else the Space ledger's, else 5); "
                             "cannot change once the Space's ledger exists.")
    parser.add_argument("--new-ledger", action="store_true", default=None,
                        help=f"Start a new ledger and subject secret where one or both have gone missing or the "
                             f"secret is not the ledger's (default: ${ENV_NEW_LEDGER}); the old files are moved aside. "
                             "Without it such a Space refuses to start, since every face would get a fresh budget.")
    parser.add_argument("--allow-domain-mismatch", action="store_true",
                        help="Run the photo mode with a model trained only on synthetic faces (the embedded default: "
                             "SynthFaces, 32 px cartoons), only to test the plumbing: every face comes back as a "
                             "cartoon. Without it such a Space refuses photos, saying how to serve real faces.")
    ns = parser.parse_args(argv)
    # every file and folder this process creates (Gradio's releases and cache included) is for this user only
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if os.environ.get(ENV_THREADS):  # e.g. 1 where other work shares the cores (OpenMP spinning is costly)
        import torch

        torch.set_num_threads(int(os.environ[ENV_THREADS]))
    pipe, model_name = load_pipeline(ns.model)
    build_demo(pipe, model_name=model_name, budget_epsilon=ns.budget_epsilon, new_ledger=ns.new_ledger,
               allow_domain_mismatch=ns.allow_domain_mismatch).launch(server_port=ns.port, server_name=ns.host)


if __name__ == "__main__":
    main()
