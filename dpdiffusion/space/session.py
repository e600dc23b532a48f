"""The Space's release logic, independent of Gradio: `SubjectSession` (one browser session), `View` (what a handler
shows) and `DPSpace` (pure handlers from inputs and a session to a view).

Budget state lives in the ledger only. A face's subject is the keyed hash of its picture (`subjects.SubjectKeyer`),
shared by every session, reload and re-upload of that picture; a session only remembers which subject it is
working on, the epsilon search and the image shown. Every release is charged to the subject's ledger by the
pipeline *before* anything is generated (one ``BEGIN IMMEDIATE`` transaction, so concurrent sessions and processes
can never together overspend); "accept" ends the session, not the budget.

A face's *first* release resolves its subject and charges it under a lock, so that two encodings of one new
picture released at the same moment cannot start two subjects. That lock is per process (the Space runs one);
releases of a face already in the ledger need no lock.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np

from .config import SpaceConfig
from .controller import EpsilonController
from .feedback import FeedbackLog
from .images import decode_original, image_to_data_url, synthfaces_samples, upscale_for_display
from .report import final_report, fmt, release_figures
from .subjects import SubjectKeyer, load_or_create_secret

logger = logging.getLogger(__name__)

VERDICT_LABELS = {"more_privacy": "more privacy", "more_detail": "more detail", "accept": "accept"}


class NoiseSourceError(RuntimeError):
    """The pipeline reported privacy noise that was not drawn from the OS CSPRNG; its image is never shown."""


@dataclass
class SubjectSession:
    """One browser session's state (in `gr.State`: server memory only, never on disk).

    ``subject_id`` is the ledger key of the face being protected (a keyed hash of its picture, the same in every
    session); ``session_id`` a random id of this session (what the feedback records carry); ``original`` the
    decoded pixels; ``controller`` the epsilon search; ``protected`` and ``report`` the image shown and its figures;
    ``releases`` and ``epsilons`` this session's releases (the ledger holds all of the face's).
    """

    subject_id: Optional[str] = None
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    original: Optional[np.ndarray] = None
    attributes: tuple = ()
    weights: tuple = ()
    controller: Optional[EpsilonController] = None
    protected: Optional[np.ndarray] = None
    report: Optional[dict] = None
    releases: int = 0
    finished: bool = False
    epsilons: tuple = ()
    spent_epsilon: float = 0.0


@dataclass
class View:
    """What a handler shows; ``None`` fields leave the page as it is (a refused request changes nothing)."""

    session: SubjectSession
    status: str
    level: str = "info"  # "info" | "refused"
    protected: Optional[np.ndarray] = None
    epsilon: Optional[float] = None
    budget_left: Optional[float] = None
    figures: Optional[str] = None
    report: Optional[str] = None
    latency_s: Optional[float] = None


class DPSpace:
    """The app's logic, independent of Gradio: pure handlers from (inputs, session) to a `View`.

    Args:
        pipe (`DPDiffusionPipeline`): the model (shared, read-only).
        ledger (`PrivacyLedger`): per-face budgets (sqlite, shared by all sessions and processes).
        feedback (`FeedbackLog`): where judgements go.
        config (`SpaceConfig`): settings; its budget and delta must be the ledger's.
        model_name (`str`): recorded with each judgement.
        subjects (`SubjectKeyer`, *optional*): the face -> subject keying; default: keyed with the secret next to
            the ledger (`subjects.load_or_create_secret`).

    Raises:
        ValueError: the ledger's budget or delta differs from the config's.
    """

    def __init__(self, pipe, *, ledger, feedback: FeedbackLog, config: SpaceConfig, model_name: str = "custom",
                 subjects: Optional[SubjectKeyer] = None):
        if ledger.delta != config.delta:
            raise ValueError(f"the ledger's delta ({ledger.delta}) must equal the app's delta ({config.delta})")
        if ledger.budget_epsilon != config.budget_epsilon:
            raise ValueError(f"the ledger's budget_epsilon ({ledger.budget_epsilon}) must equal the app's "
                             f"budget_epsilon ({config.budget_epsilon})")
        self.pipe = pipe
        self.ledger = ledger
        self.feedback_log = feedback
        self.config = config
        self.model_name = model_name
        self.subjects = subjects or SubjectKeyer(load_or_create_secret(Path(ledger.path).parent))
        # a face's first release: resolving its subject and charging it happen under this lock, so that two
        # re-encodings of one new picture released at once cannot start two subjects (within this process)
        self._new_subject_lock = threading.Lock()

    # -- helpers ----------------------------------------------------------------------------------------------
    @property
    def attribute_names(self) -> tuple:
        return tuple(self.pipe.attribute_directions.names)

    @property
    def default_attributes(self) -> list:
        from ..pipeline_dp_diffusion import DEFAULT_PROTECTED

        chosen = [a for a in DEFAULT_PROTECTED if a in self.attribute_names]
        return chosen or [self.attribute_names[0]]

    def sample(self, index) -> str:
        """The data URL of SynthFaces sample ``index`` (to show and to protect like an upload)."""
        n = self.config.num_samples
        if isinstance(index, bool) or not isinstance(index, (int, float)) or not float(index).is_integer() \
                or not 0 <= int(index) < n:
            raise ValueError(f"sample index must be an integer in [0, {n - 1}], got {index!r}")
        images = synthfaces_samples(n, self.config.sample_seed, self.config.sample_size)
        return image_to_data_url(images[int(index)])

    def _weights_for(self, attributes, weights) -> tuple:
        if isinstance(weights, dict):
            values = [weights.get(a, 1.0) for a in attributes]
        elif weights is None:
            values = [1.0] * len(attributes)
        else:
            values = list(weights)
        out = []
        for a, w in zip(attributes, values):
            if w is None or isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < float(w) < math.inf:
                raise ValueError(f"the weight of {a} must be a number > 0, got {w!r}")
            out.append(float(w))
        if len(out) != len(attributes):
            raise ValueError(f"need one weight per attribute ({len(attributes)}), got {len(out)}")
        return tuple(out)

    def _release(self, session: SubjectSession, epsilon: float, progress=None):
        """Charge the subject's ledger, then generate. Raises ``BudgetExceededError`` (nothing charged),
        `NoiseSourceError` (charged, image withheld) or ``ValueError``. Returns ``(image, report dict, seconds)``."""
        import torch

        if progress is not None:
            progress(0.0, desc="charging the privacy ledger")
        start = time.perf_counter()
        # the pipeline charges the ledger atomically before it generates anything, and refuses (charging
        # nothing) when the release would exceed the subject's budget. Privacy noise: OS CSPRNG, always; the
        # stochastic code x_T comes from a generator seeded from `secrets`.
        out = self.pipe(session.original, ledger=self.ledger, subject_ids=[session.subject_id],
                        attributes=list(session.attributes), weights=list(session.weights), epsilon=float(epsilon),
                        delta=self.config.delta, num_inference_steps=self.config.num_inference_steps,
                        generator=torch.Generator().manual_seed(secrets.randbits(63)), output_type="np",
                        secure_mode=True)
        source = getattr(out, "noise_source", "csprng")
        if source != "csprng":
            raise NoiseSourceError(f"the model reported noise_source={source!r}: its privacy noise was not drawn "
                                   "from the OS CSPRNG, so the image is not shown. The release was charged.")
        seconds = time.perf_counter() - start
        image = (np.clip(out.images[0], 0.0, 1.0) * 255.0).round().astype(np.uint8)  # (H, W, 3)
        return image, out.report.to_dict(), seconds

    def _shown(self, session: SubjectSession, status: str, latency_s: Optional[float]) -> View:
        sid = session.subject_id
        hints = self._next_hints(session)
        figures = release_figures(session.report, releases_here=session.epsilons,
                                  releases_total=len(self.ledger.history(sid)), spent=self.ledger.spent(sid),
                                  left=self.ledger.remaining(sid), budget=self.ledger.budget_epsilon,
                                  delta=self.ledger.delta, latency_s=latency_s,
                                  steps=self.config.num_inference_steps, hints=hints)
        return View(session=session, status=status, protected=upscale_for_display(session.protected),
                    epsilon=float(session.report["epsilon"]),
                    budget_left=float(f"{self.ledger.remaining(sid):.4g}"), figures=figures, latency_s=latency_s)

    def _next_hints(self, session: SubjectSession) -> list:
        """What "more privacy" / "more detail" would release next, and whether the ledger would allow it."""
        hints = []
        for verdict in ("more_privacy", "more_detail"):
            nxt = session.controller.propose(verdict)
            if not session.controller.moved(nxt):
                hints.append(f"{VERDICT_LABELS[verdict]}: cannot move further")
                continue
            cal = self.pipe.calibrate(self.pipe.privacy_spec(
                attributes=list(session.attributes), weights=list(session.weights), epsilon=nxt.epsilon,
                delta=self.config.delta))
            after = self.ledger.preview(session.subject_id, noise_multiplier=cal.noise_multiplier)
            fits = after <= self.ledger.budget_epsilon
            hints.append(f"{VERDICT_LABELS[verdict]} → ε={fmt(nxt.epsilon)} (total after: {fmt(after)}"
                         f"{'' if fits else ', over budget: would be refused'})")
        return hints

    def _record(self, session: SubjectSession, verdict: str) -> dict:
        r = session.report
        record = {
            "session_id": session.session_id,  # random per session: never the ledger's subject id
            "release_index": session.releases,
            "verdict": verdict,
            "epsilon": r["epsilon"],
            "delta": r["delta"],
            "attributes": list(r["attributes"]),
            "weights": [float(w) for w in session.weights],
            "normalized_weights": list(r["weights"]),
            "noise_multiplier": r["noise_multiplier"],
            "sigmas": [r["sigmas"][a] for a in r["attributes"]],
            "strength": r["strength"],
            "guarantee": r["guarantee"],
            "scope": r["scope"],
            "spent_epsilon": session.spent_epsilon,  # the face's, composed over all its releases up to this image
            "budget_epsilon": self.ledger.budget_epsilon,
            "model": self.model_name,
            "num_inference_steps": self.config.num_inference_steps,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        return self.feedback_log.append(record, session.protected)

    @staticmethod
    def _refuse(session: SubjectSession, why: str) -> View:
        return View(session=session, status=f"**Refused.** {why}", level="refused")

    # -- handlers ---------------------------------------------------------------------------------------------
    def protect(self, image, attributes, weights, start_epsilon, session: Optional[SubjectSession],
                progress=None) -> View:
        """Start (or restart) protecting the loaded face at ``start_epsilon``: one release, charged to its subject.

        The subject is the picture's keyed hash, whatever session, encoding or size it arrives in; the same face
        continues this session (also with other attributes or weights); after "accept", or for another face, a new
        session starts, always on the face's one budget.
        """
        session = session if session is not None else SubjectSession()
        try:
            original = decode_original(image)
            attributes = list(attributes or [])
            if not attributes:
                raise ValueError("choose at least one attribute to protect")
            unknown = [a for a in attributes if a not in self.attribute_names]
            if unknown:
                raise ValueError(f"unknown attributes {unknown}; this model knows {list(self.attribute_names)}")
            weights = self._weights_for(attributes, weights)
            eps = float(start_epsilon) if start_epsilon is not None else self.config.start_epsilon
            controller = EpsilonController(epsilon=eps, step_factor=self.config.step_factor,
                                           min_epsilon=self.config.min_epsilon, max_epsilon=self.config.max_epsilon)
        except (TypeError, ValueError) as exc:
            return self._refuse(session, str(exc))

        def start(subject_id: str) -> SubjectSession:
            if subject_id == session.subject_id and not session.finished:
                return replace(session, original=original, attributes=tuple(attributes), weights=weights,
                               controller=controller)
            return SubjectSession(subject_id=subject_id, original=original, attributes=tuple(attributes),
                                  weights=weights, controller=controller)

        known = set(self.ledger.subjects())
        subject_id = self.subjects.resolve(original, known)
        if subject_id in known:
            return self._generate(session, start(subject_id), eps, progress, "First protected image")
        with self._new_subject_lock:  # a new face: resolve again and charge before another session can
            subject_id = self.subjects.resolve(original, set(self.ledger.subjects()))
            return self._generate(session, start(subject_id), eps, progress, "First protected image")

    def _generate(self, old: SubjectSession, new: SubjectSession, epsilon: float, progress, what: str,
                  verdict: Optional[str] = None) -> View:
        from ..privacy.ledger import BudgetExceededError

        try:
            image, report, seconds = self._release(new, epsilon, progress)
        except BudgetExceededError as exc:
            return self._refuse(old, f"this release would exceed the face's privacy budget: on its own "
                                     f"ε={fmt(exc.release_epsilon)}, it would bring the face's total to "
                                     f"ε={fmt(exc.epsilon_after)}, over its budget of "
                                     f"{fmt(exc.budget_epsilon)} (spent so far in all sessions: "
                                     f"{fmt(exc.spent_epsilon)}, left: {fmt(exc.remaining_epsilon)}), so nothing "
                                     "was generated and nothing was charged. You can accept the current image, ask "
                                     "for more privacy (a smaller ε), or load another face.")
        except NoiseSourceError as exc:
            logger.error("release withheld: %s", exc)
            return self._refuse(old, str(exc))
        except ValueError as exc:
            return self._refuse(old, str(exc))
        if verdict is not None:  # the judgement of the previous image is recorded once the next release exists
            self._record(old, verdict)
        new = replace(new, protected=image, report=report, releases=new.releases + 1,
                      epsilons=new.epsilons + (report["epsilon"],), spent_epsilon=self.ledger.spent(new.subject_id))
        logger.info("release %d of a session of subject %s… at epsilon=%.4g in %.2f s", new.releases,
                    new.subject_id[:8], report["epsilon"], seconds)
        return self._shown(new, f"{what} at ε={fmt(report['epsilon'])}. Judge it: more privacy, more detail "
                                f"or accept.", seconds)

    def feedback(self, verdict: str, session: Optional[SubjectSession], progress=None) -> View:
        """Judge the image shown: ``"more_privacy"`` / ``"more_detail"`` release again at the controller's next
        epsilon (charged; refused when over budget, changing nothing), ``"accept"`` ends the session.

        Raises:
            ValueError: ``verdict`` is not one of ``VERDICT_LABELS``.
        """
        session = session if session is not None else SubjectSession()
        if verdict not in VERDICT_LABELS:
            raise ValueError(f"verdict must be one of {tuple(VERDICT_LABELS)}, got verdict={verdict!r}")
        if session.protected is None:
            return self._refuse(session, "no protected image to judge yet: load a face and press Protect")
        if session.finished:
            return self._refuse(session, "this session has ended (accepted); press Protect to start a new one on "
                                         "the face's remaining budget, or load another face")
        if verdict == "accept":
            return self.accept(session)
        nxt = session.controller.propose(verdict)
        if not session.controller.moved(nxt):
            return self._refuse(session, f"ε cannot move further in that direction (now {fmt(nxt.epsilon)}, "
                                         f"range [{self.config.min_epsilon}, {self.config.max_epsilon}])")
        new = replace(session, controller=nxt)
        label = "More privacy" if verdict == "more_privacy" else "More detail"
        return self._generate(session, new, nxt.epsilon, progress, label, verdict=verdict)

    def accept(self, session: SubjectSession) -> View:
        """Record "accept" for the image shown and end the session with a final report (no charge). The face's
        budget is not reset: a later session on the same picture continues from what is spent."""
        self._record(session, "accept")
        controller = session.controller.propose("accept")
        done = replace(session, controller=controller, finished=True)
        sid = session.subject_id
        steps = " → ".join(f"{fmt(e)} ({VERDICT_LABELS[v]})" for e, v in controller.history)
        view = self._shown(done, "Accepted. This session has ended; the face keeps its remaining budget for later "
                                 "sessions.", None)
        view.report = final_report(session.report, weights=session.weights, releases_here=session.releases,
                                   releases_total=len(self.ledger.history(sid)), steps=steps,
                                   spent=self.ledger.spent(sid), left=self.ledger.remaining(sid),
                                   budget=self.ledger.budget_epsilon, delta=self.ledger.delta)
        return view
