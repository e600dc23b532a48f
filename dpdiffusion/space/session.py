"""The Space's release logic, independent of Gradio: `SubjectSession` (one browser session), `View` (what a handler
shows), `FaceLedger` (the ledger as one release sees it) and `DPSpace` (pure handlers from inputs and a session to a
view).

Budget state lives in the ledger only. A face's subjects are the keyed hashes of the picture and of each face found
in it (`subjects.py`), shared by every session, reload and re-upload of that picture and by the photo mode; a
session only remembers which subjects it is working on, the epsilon search, the image shown and *its own* releases.
Every release is charged to all of the picture's subjects by the pipeline *before* anything is generated (one
``BEGIN IMMEDIATE`` transaction, so concurrent sessions and processes can never together overspend); "accept" ends
the session, not the budget.

What a session is told (what leaves the ledger). A face's ledger holds every session's releases; none of it reaches
another session. Refusals decided by the request alone (an epsilon out of range or above a whole budget, an unknown
attribute, a bad picture) are made before the ledger is read; a refusal decided with this session's own releases
says so with this session's figures; a refusal decided by the ledger (`ReleaseRefused`: the face's remaining budget,
or the attributes its first release protected) says only that the release does not fit, never what was spent, what
is left or what others protected. The figures, the final report and the feedback records carry this session's
releases and their composition (`SubjectSession.spent_epsilon`), never the face's total over sessions: "budget left"
after a release would tell anyone holding the picture what others spent, at the price of one release at the
smallest epsilon (which costs almost nothing). Residual channels: whether a request is refused is itself a function of
what others spent and protected, so repeated free refusals at decreasing epsilons bound a face's spend, and requests
at a negligible epsilon that each leave out one attribute reveal which attributes the face's first release protected
(those refused); see docs/threat-model.md, "What a refusal still tells".

A face's *first* release resolves its subjects and charges them under a lock, so that two encodings of one new
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
from .images import (decode_photo, face_square, face_square_box, image_to_data_url, synthfaces_samples,
                     upscale_for_display)
from .report import final_report, fmt, release_figures
from .face_identity import FaceIdentityKeyer, open_space_keyer
from .subjects import find_face_crops, load_or_create_secret

logger = logging.getLogger(__name__)

VERDICT_LABELS = {"more_privacy": "more privacy", "more_detail": "more detail", "accept": "accept"}


class NoiseSourceError(RuntimeError):
    """The pipeline reported privacy noise that was not drawn from the OS CSPRNG; its image is never shown."""


class ReleaseRefused(Exception):
    """The ledger refused a release of a face: it would exceed the budget of one of the face's subjects
    (``kind="budget"``), or leave out attributes that a subject's first release protected (``kind="relation"``).

    Both depend on other sessions' releases, so the message names no figure of the face; the ledger's own error (with
    the subject id, what was spent and what the first release protected) is dropped.
    """

    def __init__(self, kind: str):
        self.kind = kind
        super().__init__(f"the ledger refused the release ({kind})")


def refusal_text(budget_epsilon: float, delta: float) -> str:
    """What a session is told when the ledger refuses a release: that it does not fit, and nothing about others (no
    figure, no attribute). Whether a request is refused still depends on other sessions' releases (the module
    docstring)."""
    return (f"this release does not fit what is left of this face's privacy budget, so nothing was generated and "
            f"nothing was charged. A face's budget (ε = {budget_epsilon:g} at δ = {delta:.0e}) covers every release "
            "of it, in every session and in both modes, and every release of a face must protect at least the "
            "attributes its first release protected; no message names what other sessions spent or which "
            "attributes they protected (though which requests are refused depends on both). You can accept the "
            "current image, ask for more privacy (a smaller ε), protect more attributes, or load another face.")


class FaceLedger:
    """The ledger as the pipeline sees it for one release.

    ``charge_many`` charges ``subject_ids`` (every subject of the picture, at once: all or nothing) in place of the
    one id the pipeline passes for its one image (or the pipeline's own ids when ``subject_ids`` is `None`, as in the
    photo mode), and turns the ledger's refusals into `ReleaseRefused`.

    Args:
        ledger (`PrivacyLedger`): the Space's ledger.
        subject_ids (`tuple[str]`, *optional*): the subjects each release of the pipeline's one image is charged to.
        on_charged (callable, *optional*): called once the ledger has charged (before anything is generated): the
            faces' band keys join the subject index then, so a refused request teaches the index nothing.
    """

    def __init__(self, ledger, subject_ids: Optional[tuple] = None, *, on_charged=None):
        self.ledger = ledger
        self.subject_ids = None if subject_ids is None else tuple(subject_ids)
        self.on_charged = on_charged

    def charge_many(self, subject_ids, **kwargs) -> list:
        from ..privacy.ledger import BudgetExceededError

        ids = list(subject_ids) if self.subject_ids is None else list(self.subject_ids)
        try:
            left = self.ledger.charge_many(ids, **kwargs)
        except BudgetExceededError:
            raise ReleaseRefused("budget") from None
        except ValueError:  # the neighbouring relation of a subject's first release (the pipeline checked the rest)
            raise ReleaseRefused("relation") from None
        if self.on_charged is not None:
            self.on_charged()
        return left if self.subject_ids is None else [min(left)] * len(subject_ids)


@dataclass
class SubjectSession:
    """One browser session's state (in `gr.State`: server memory only, never on disk; dropped when the session's tab
    closes, or ``SESSION_TTL_S`` after its last answer).

    ``subject_ids`` are the ledger keys every release is charged to: the picture's keyed hash first
    (``subject_id``), then that of each face found in it (the same in every session and in the photo mode);
    ``session_id`` a random id of this session (what the feedback records carry); ``original`` the decoded pixels;
    ``controller`` the epsilon search; ``protected`` and ``report`` the image shown and its figures; ``releases``,
    ``epsilons`` and ``noise_multipliers`` this session's releases and ``spent_epsilon`` their composition (this
    session's only: the ledger holds all of the face's, and no session is told them).
    """

    subject_ids: tuple = ()
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
    noise_multipliers: tuple = ()
    spent_epsilon: float = 0.0

    @property
    def subject_id(self) -> Optional[str]:
        """The picture's own subject (the first of ``subject_ids``), or `None` before the first release."""
        return self.subject_ids[0] if self.subject_ids else None


@dataclass
class View:
    """What a handler shows; ``None`` fields leave the page as it is (a refused request changes nothing)."""

    session: SubjectSession
    status: str
    level: str = "info"  # "info" | "refused"
    protected: Optional[np.ndarray] = None
    epsilon: Optional[float] = None
    session_spent: Optional[float] = None
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
        model_name (`str`): the model as shown and recorded with each judgement (a repo id or card title, never a
            file path: `config.public_model_name`).
        subjects (`FaceIdentityKeyer`, *optional*): the face -> subject keying; default: keyed with the secret next to
            the ledger (`store.load_or_create_secret`, which refuses to make a new one next to a ledger that holds
            releases) on the subject index beside it (`face_identity.open_subject_index`, which refuses to make a
            new one next to a ledger that holds releases).

    Raises:
        ValueError: the ledger's budget or delta differs from the config's; the secret is missing next to a ledger
            with releases.
    """

    def __init__(self, pipe, *, ledger, feedback: FeedbackLog, config: SpaceConfig, model_name: str = "custom",
                 subjects: Optional[FaceIdentityKeyer] = None):
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
        if subjects is None:
            folder = Path(ledger.path).parent
            subjects = open_space_keyer(folder, load_or_create_secret(folder, create=not ledger.subjects()),
                                        ledger=ledger)
        self.subjects = subjects
        # a face's first release: resolving its subjects and charging them happen under this lock, so that two
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

    def check_attributes(self, attributes) -> list:
        """The attributes of a request, checked (a request-only refusal: ``ValueError``)."""
        attributes = list(attributes or [])
        if not attributes:
            raise ValueError("choose at least one attribute to protect")
        unknown = [a for a in attributes if a not in self.attribute_names]
        if unknown:
            raise ValueError(f"unknown attributes {unknown}; this model knows {list(self.attribute_names)}")
        return attributes

    def check_epsilon(self, epsilon) -> float:
        """The epsilon of a request, checked against the range and the whole budget before the ledger is read: a
        release at more than a face's whole budget fits no face (``ValueError``)."""
        c = self.config
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not c.min_epsilon <= epsilon \
                <= c.max_epsilon:
            raise ValueError(f"epsilon must be a number in [{c.min_epsilon:g}, {c.max_epsilon:g}], got {epsilon!r}")
        if epsilon > c.budget_epsilon:
            raise ValueError(f"ε={fmt(epsilon)} on its own is more than a face's whole budget (ε = "
                             f"{c.budget_epsilon:g}), so no face can afford it; nothing was generated or charged")
        return float(epsilon)

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

    def _composed(self, multipliers) -> float:
        """Epsilon (at the ledger's delta) of releases with these noise multipliers, composed as the ledger composes
        a subject's releases (`dpdiffusion.privacy.accounting`: exact Gaussian composition)."""
        from ..privacy.accounting import compose_noise_multipliers, gaussian_epsilon

        if not multipliers:
            return 0.0
        return gaussian_epsilon(sigma=compose_noise_multipliers(multipliers), delta=self.ledger.delta)

    def _multiplier(self, session: SubjectSession, epsilon: float) -> float:
        return self.pipe.calibrate(self.pipe.privacy_spec(
            attributes=list(session.attributes), weights=list(session.weights), epsilon=float(epsilon),
            delta=self.config.delta)).noise_multiplier

    def _release(self, session: SubjectSession, epsilon: float, progress=None, on_charged=None):
        """Charge all of the session's subjects, then generate. Raises `ReleaseRefused` (nothing charged),
        `NoiseSourceError` (charged, image withheld) or ``ValueError``. Returns ``(image, report dict, seconds)``."""
        import torch

        if progress is not None:
            progress(0.0, desc="charging the privacy ledger")
        start = time.perf_counter()
        # the pipeline charges the ledger atomically before it generates anything, and refuses (charging
        # nothing) when the release would exceed a subject's budget. Privacy noise: OS CSPRNG, always; the
        # stochastic code x_T comes from a generator seeded from `secrets`.
        out = self.pipe(session.original, ledger=FaceLedger(self.ledger, session.subject_ids, on_charged=on_charged),
                        subject_ids=[session.subject_id], attributes=list(session.attributes),
                        weights=list(session.weights), epsilon=float(epsilon), delta=self.config.delta,
                        num_inference_steps=self.config.num_inference_steps,
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
        figures = release_figures(session.report, releases_here=session.epsilons, session_spent=session.spent_epsilon,
                                  budget=self.config.budget_epsilon, delta=self.config.delta, latency_s=latency_s,
                                  steps=self.config.num_inference_steps,
                                  hints=() if session.finished else self._next_hints(session))  # accepted: no next
        return View(session=session, status=status, protected=upscale_for_display(session.protected),
                    epsilon=float(session.report["epsilon"]),
                    session_spent=float(f"{session.spent_epsilon:.4g}"), figures=figures, latency_s=latency_s)

    def _next_hints(self, session: SubjectSession) -> list:
        """What "more privacy" / "more detail" would release next, and what this session would have spent then
        (whether the face's ledger allows it depends on other sessions too, and is not said)."""
        hints = []
        for verdict in ("more_privacy", "more_detail"):
            nxt = session.controller.propose(verdict)
            if not session.controller.moved(nxt):
                hints.append(f"{VERDICT_LABELS[verdict]}: cannot move further")
                continue
            after = self._composed(session.noise_multipliers + (self._multiplier(session, nxt.epsilon),))
            over = after > self.config.budget_epsilon
            hints.append(f"{VERDICT_LABELS[verdict]} → ε={fmt(nxt.epsilon)} (this session after: {fmt(after)}"
                         f"{', over the budget: would be refused' if over else ''})")
        return hints

    def _session_refusal(self, session: SubjectSession, epsilon: float) -> Optional[str]:
        """Why this session's own releases and one more at ``epsilon`` cannot fit the budget (decided without the
        ledger), or `None`."""
        after = self._composed(session.noise_multipliers + (self._multiplier(session, epsilon),))
        if after <= self.config.budget_epsilon:
            return None
        return (f"this session's own releases of this face (ε={fmt(session.spent_epsilon)} together) and this one at "
                f"ε={fmt(epsilon)} would together spend ε={fmt(after)}, over the face's budget of "
                f"{self.config.budget_epsilon:g}, so nothing was generated and nothing was charged. You can accept "
                "the current image or ask for more privacy (a smaller ε).")

    def _record(self, session: SubjectSession, verdict: str) -> dict:
        r = session.report
        record = {
            "session_id": session.session_id,  # random per session: never a ledger subject id
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
            # this session's releases composed, up to this image; never the face's total over sessions, which would
            # link the records of one face that carry different session ids
            "session_spent_epsilon": session.spent_epsilon,
            "budget_epsilon": self.config.budget_epsilon,
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
        """Start (or restart) protecting the loaded picture at ``start_epsilon``: one release, charged to all of its
        subjects (the picture, and each face found in it).

        The subjects are keyed hashes, whatever session, encoding or size the picture arrives in, and a face found
        here is the same subject as that face in the photo mode; the same face continues this session (also with
        other attributes or weights); after "accept", or for another face, a new session starts, always on the
        face's one budget. Request-only refusals (the picture, the attributes, the weights, epsilon out of range or
        above the whole budget) come before the ledger is read.
        """
        session = session if session is not None else SubjectSession()
        try:
            photo = decode_photo(image)
            original = face_square(photo)
            attributes = self.check_attributes(attributes)
            weights = self._weights_for(attributes, weights)
            eps = self.check_epsilon(float(start_epsilon) if start_epsilon is not None else self.config.start_epsilon)
            controller = EpsilonController(epsilon=eps, step_factor=self.config.step_factor,
                                           min_epsilon=self.config.min_epsilon, max_epsilon=self.config.max_epsilon)
        except (TypeError, ValueError) as exc:
            return self._refuse(session, str(exc))
        if progress is not None:
            progress(0.0, desc="finding the face's budget")  # faces, descriptor and keyed lookups: about 1 s
        found = find_face_crops(photo, within=face_square_box(photo))

        matches: list = []

        def subjects_of(known) -> tuple:  # the picture itself first, then each face found in it (and its person)
            matches[:] = [self.subjects.match(original, known, person=not found, register=False),
                          *(self.subjects.match(crop, known, photo=photo, face=face, register=False)
                            for face, crop in found)]
            return tuple(dict.fromkeys(m.subject_id for m in matches))

        def charged() -> None:  # the faces' new band keys join the index only with a charge (never on a refusal)
            for m in matches:
                self.subjects.register(m)

        def start(subject_ids: tuple) -> SubjectSession:
            if subject_ids == session.subject_ids and not session.finished:
                return replace(session, original=original, attributes=tuple(attributes), weights=weights,
                               controller=controller)
            return SubjectSession(subject_ids=subject_ids, original=original, attributes=tuple(attributes),
                                  weights=weights, controller=controller)

        known = set(self.ledger.subjects())
        subject_ids = subjects_of(known)
        if known.issuperset(subject_ids):
            return self._generate(session, start(subject_ids), eps, progress, "First protected image",
                                  on_charged=charged)
        with self._new_subject_lock:  # a new face: resolve again and charge before another session can
            subject_ids = subjects_of(set(self.ledger.subjects()))
            return self._generate(session, start(subject_ids), eps, progress, "First protected image",
                                  on_charged=charged)

    def _generate(self, old: SubjectSession, new: SubjectSession, epsilon: float, progress, what: str,
                  verdict: Optional[str] = None, on_charged=None) -> View:
        try:
            why = self._session_refusal(new, epsilon)
            if why is not None:
                return self._refuse(old, why)
            image, report, seconds = self._release(new, epsilon, progress, on_charged)
        except ReleaseRefused as exc:
            logger.info("release refused by the ledger (%s)", exc.kind)
            return self._refuse(old, refusal_text(self.config.budget_epsilon, self.config.delta))
        except NoiseSourceError as exc:
            logger.error("release withheld: %s", exc)
            return self._refuse(old, str(exc))
        except ValueError as exc:  # the pipeline's checks of the request (the ledger's refusals are ReleaseRefused)
            return self._refuse(old, str(exc))
        if verdict is not None:  # the judgement of the previous image is recorded once the next release exists
            self._record(old, verdict)
        multipliers = new.noise_multipliers + (float(report["noise_multiplier"]),)
        new = replace(new, protected=image, report=report, releases=new.releases + 1,
                      epsilons=new.epsilons + (report["epsilon"],), noise_multipliers=multipliers,
                      spent_epsilon=self._composed(multipliers))
        logger.info("release %d of a session (%d subject(s)) at epsilon=%.4g in %.2f s", new.releases,
                    len(new.subject_ids), report["epsilon"], seconds)
        return self._shown(new, f"{what} at ε={fmt(report['epsilon'])}. Judge it: more privacy, more detail "
                                f"or accept.", seconds)

    def feedback(self, verdict: str, session: Optional[SubjectSession], progress=None) -> View:
        """Judge the image shown: ``"more_privacy"`` / ``"more_detail"`` release again at the controller's next
        epsilon (charged; refused when it does not fit, changing nothing), ``"accept"`` ends the session.

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
                                         "what is left of the face's budget, or load another face")
        if verdict == "accept":
            return self.accept(session)
        nxt = session.controller.propose(verdict)
        if not session.controller.moved(nxt):
            return self._refuse(session, f"ε cannot move further in that direction (now {fmt(nxt.epsilon)}, "
                                         f"range [{self.config.min_epsilon}, {self.config.max_epsilon}])")
        try:
            self.check_epsilon(nxt.epsilon)
        except ValueError as exc:
            return self._refuse(session, str(exc))
        new = replace(session, controller=nxt)
        label = "More privacy" if verdict == "more_privacy" else "More detail"
        return self._generate(session, new, nxt.epsilon, progress, label, verdict=verdict)

    def accept(self, session: SubjectSession) -> View:
        """Record "accept" for the image shown and end the session with a final report (no charge). The face's
        budget is not reset: a later session on the same picture continues from what is spent."""
        self._record(session, "accept")
        controller = session.controller.propose("accept")
        done = replace(session, controller=controller, finished=True)
        steps = " → ".join(f"{fmt(e)} ({VERDICT_LABELS[v]})" for e, v in controller.history)
        view = self._shown(done, "Accepted. This session has ended; the face keeps what is left of its budget for "
                                 "later sessions.", None)
        view.report = final_report(session.report, weights=session.weights, releases_here=session.releases,
                                   steps=steps, session_spent=session.spent_epsilon,
                                   budget=self.config.budget_epsilon, delta=self.config.delta)
        return view
