"""`PrivacyLoop`: the data owner's loop over a dataset and a classifier trained on it (arXiv 2409.03326, Figure 1).

One step shows, at the current epsilon, a handful of preview releases and the consequence for the model: the
classifier unlearned on a pilot subset's (original, released) pairs, measured (`dpdiffusion.loop.figures`). The owner
answers ``"more_privacy"``, ``"more_utility"`` or ``"accept"``; epsilon moves with the Space's `EpsilonController`
(a log-space bisection between the epsilons judged too revealing and too noisy) and the next step is computed (each
epsilon once: coming back costs nothing). ``accept`` protects the whole dataset once, charges each subject in a
`PrivacyLedger`, unlearns the classifier with the unlearn job and writes (`dpdiffusion.loop.accept`)::

    OUT/release/     the release, as ``dpdiffusion protect`` writes it: safe to publish
    OUT/model/       the unlearned classifier with its card (pipeline("image-classification") loads it)
    OUT/loop.json    the owner's record of every step (epsilon, figures, verdict) and the final figures: NOT published
    OUT/private/     the owner's bookkeeping (the source copy, held-out rows, protect's state, the default ledger)

Privacy rules (docs/threat-model.md):

- the previews and the pilot figures stay inside the data owner's trust boundary and are not charged: the owner holds
  the originals, so showing them noisy versions of their own data reveals nothing they do not know. They never leave:
  no preview is published, and no preview's noise is reused;
- only what ``accept`` publishes is charged, once per released image of a subject (``subject_column``; default one
  subject per row, so exactly one charge per subject);
- the pilot's rows and the held-out rows are chosen before any noise is drawn, from the data alone (a permutation
  seeded by ``seed`` over the row count).

The accepted epsilon itself was chosen by looking at the data (like any parameter the owner tunes on it); the DP
guarantee covers each image's release at that epsilon, not the choice of it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["VERDICTS", "LoopStep", "PrivacyLoop"]

VERDICTS = ("more_privacy", "more_utility", "accept")
_CONTROLLER_VERDICT = {"more_privacy": "more_privacy", "more_utility": "more_detail", "accept": "accept"}


@dataclass
class LoopStep:
    """One step of the loop: the release's privacy figures, previews and the model's consequence at ``epsilon``.

    Attributes:
        epsilon (`float`), delta (`float`): the release's parameters.
        privacy (`dict`): the pipeline's privacy report of the previews (sigmas, noise multiplier, guarantee ...).
        previews (`list[PIL.Image.Image]`): a handful of preview releases (never published, never charged).
        figures (`dict`): `dpdiffusion.loop.figures.measure_figures` on the pilot.
        seconds (`float`): wall-clock seconds the step took.
        verdict (`str` or `None`): the owner's answer, once given.
    """

    epsilon: float
    delta: float
    privacy: dict
    previews: list = field(repr=False)
    figures: dict
    seconds: float
    verdict: str | None = None

    def to_dict(self) -> dict:
        """Everything but the previews (JSON-ready)."""
        return {"epsilon": self.epsilon, "delta": self.delta, "privacy": self.privacy, "figures": self.figures,
                "seconds": self.seconds, "verdict": self.verdict}


def _check_positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def _load_dataset(dataset: Any, image_column: str):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return dataset, None
    if isinstance(dataset, (str, bytes)) or hasattr(dataset, "__fspath__"):
        from ..data.attributes import load_attribute_dataset

        path = str(dataset)
        return load_attribute_dataset(path, image_column=image_column, attribute_columns=[]), path
    raise ValueError(f"dataset must be a datasets.Dataset or a path that datasets loads, got {type(dataset).__name__}")


class PrivacyLoop:
    """The data owner's loop: preview at epsilon, the model's consequence, feedback, accept.

    Args:
        pipe (`DPDiffusionPipeline`, `str` or `None`): the pipeline, or a folder / Hub id (None: the embedded default).
        dataset (`datasets.Dataset` or `str`): the training images with their attribute and label columns.
        classifier (`str` or `transformers.PreTrainedModel`): a multi-label `AutoModelForImageClassification`
            trained on ``dataset`` (folder or Hub id, with its image processor; or the model itself with
            ``image_processor``).
        attributes (`Sequence[str]`): the protected attributes (columns of ``dataset``).
        label_columns (`Sequence[str]`): the classifier's outputs, 0/1 columns of ``dataset`` named as in its
            ``id2label``.
        epsilon (`float`): the first step's epsilon, in [0.01, 100]. delta (`float`): in (0, 1).
        held_out (`datasets.Dataset` or `str`, *optional*): clean images the classifier was NOT trained on, with the
            same columns: utility, the model's leakage and the non-members of membership inference. Without it a
            ``held_out_fraction`` of ``dataset`` is used, with a warning (the classifier saw those rows).
        held_out_fraction (`float`): in (0, 1); used only without ``held_out``.
        pilot_size (`int`): rows of ``dataset`` the steps release and unlearn (>= 8).
        num_previews (`int`): preview images per step (>= 1).
        subject_column (`str`, *optional*): the column naming the person of each row (default: one subject per row).
        image_column (`str`): the image column. image_processor: the classifier's, when ``classifier`` is a model.
        num_inference_steps (`int`, *optional*): DDIM steps of every release (default: the pipeline's).
        unlearning_method (`str`, *optional*): default the unlearn job's (`UnlearnConfig.method`).
        attacker_epochs (`int`): epochs of the attacker on the released images. retrain_epochs (`int`): epochs of
            the retraining at accept (0: no retraining, no gap restored).
        step_factor (`float`): the controller's multiplicative step (> 1). seed (`int`): the pilot / held-out choice.

    Raises:
        ValueError: for out-of-range arguments or missing columns (the message names the argument).
    """

    def __init__(self, pipe: Any, dataset: Any, classifier: Any, *, attributes: Sequence[str],
                 label_columns: Sequence[str], epsilon: float = 1.0, delta: float = 1e-5, held_out: Any = None,
                 held_out_fraction: float = 0.2, pilot_size: int = 64, num_previews: int = 8,
                 subject_column: str | None = None, image_column: str = "image", image_processor: Any = None,
                 num_inference_steps: int | None = None, unlearning_method: str | None = None,
                 attacker_epochs: int = 8, retrain_epochs: int = 10, step_factor: float = 2.0, seed: int = 0,
                 progress: bool = False):
        import torch

        from ..models.default import load_pipeline
        from ..space.controller import EpsilonController
        from ..unlearning.core import METHODS
        from ..unlearning.data import load_classifier
        from ..unlearning.job_config import UnlearnConfig

        if not attributes or isinstance(attributes, str):
            raise ValueError(f"attributes must be a non-empty list of column names, got attributes={attributes!r}")
        if not label_columns or isinstance(label_columns, str):
            raise ValueError(f"label_columns must be a non-empty list of column names, got label_columns={label_columns!r}")
        if isinstance(delta, bool) or not 0.0 < float(delta) < 1.0:
            raise ValueError(f"delta must be in (0, 1), got delta={delta}")
        if not 0.0 < held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in (0, 1), got held_out_fraction={held_out_fraction}")
        self.pilot_size = _check_positive_int("pilot_size", pilot_size, 8)
        self.num_previews = _check_positive_int("num_previews", num_previews, 1)
        self.attacker_epochs = _check_positive_int("attacker_epochs", attacker_epochs, 1)
        self.retrain_epochs = _check_positive_int("retrain_epochs", retrain_epochs, 0)
        method = unlearning_method or UnlearnConfig.__dataclass_fields__["method"].default
        if method not in METHODS:
            raise ValueError(f"unlearning_method must be one of {list(METHODS)}, got unlearning_method={method!r}")
        self.controller = EpsilonController(epsilon=epsilon, step_factor=step_factor)  # validates epsilon's range
        self.attributes, self.label_columns = list(attributes), list(label_columns)
        self.delta, self.seed, self.progress = float(delta), int(seed), progress
        self.unlearning_method, self.image_column = method, image_column
        self.num_inference_steps, self.subject_column = num_inference_steps, subject_column

        self.dataset, self.dataset_path = _load_dataset(dataset, image_column)
        needed = [image_column, *self.attributes, *self.label_columns, *([subject_column] if subject_column else [])]
        missing = [c for c in needed if c not in self.dataset.column_names]
        if missing:
            raise ValueError(f"dataset has no column(s) {missing}; it has {self.dataset.column_names}")
        if len(self.dataset) < self.pilot_size:
            raise ValueError(f"pilot_size must be <= the dataset's {len(self.dataset)} rows, got pilot_size={pilot_size}")
        if isinstance(classifier, (str, bytes)) or hasattr(classifier, "__fspath__"):
            self.classifier_path = str(classifier)
            self.classifier, processor = load_classifier(self.classifier_path)
            self.image_processor = image_processor or processor
        else:
            self.classifier_path, self.classifier, self.image_processor = None, classifier, image_processor
        if self.image_processor is None:
            raise ValueError("classifier has no image processor: pass image_processor= (the one it was trained with)")
        if getattr(self.classifier.config, "problem_type", None) != "multi_label_classification":
            raise ValueError("classifier must be a multi-label classifier (config.problem_type="
                             f"'multi_label_classification'), got {self.classifier.config.problem_type!r}")
        outputs = [self.classifier.config.id2label[i] for i in range(self.classifier.config.num_labels)]
        if outputs != self.label_columns:
            raise ValueError(f"label_columns must name the classifier's outputs in order {outputs}, got "
                             f"label_columns={self.label_columns}")
        self.classifier.eval()
        self.pipe = pipe if hasattr(pipe, "privacy_spec") else load_pipeline(pipe)

        # the pilot and the held-out rows: chosen here, before any noise is drawn, from the row count and the seed
        order = np.random.default_rng(self.seed).permutation(len(self.dataset))
        if held_out is None:
            n_held = max(2, int(round(held_out_fraction * len(self.dataset))))
            if len(self.dataset) - n_held < self.pilot_size:
                raise ValueError(f"pilot_size={pilot_size} and held_out_fraction={held_out_fraction} need more than "
                                 f"the dataset's {len(self.dataset)} rows")
            logger.warning("no held_out dataset: %d rows of the training data are used as held-out data; the "
                           "classifier saw them, so utility is optimistic and membership inference weak", n_held)
            self.held_out_rows = np.sort(order[:n_held])
            self.held_out, self.held_out_path = self.dataset.select(self.held_out_rows), None
            order = order[n_held:]
        else:
            self.held_out_rows = None
            self.held_out, self.held_out_path = _load_dataset(held_out, image_column)
            missing = [c for c in [image_column, *self.attributes, *self.label_columns]
                       if c not in self.held_out.column_names]
            if missing:
                raise ValueError(f"held_out has no column(s) {missing}; it has {self.held_out.column_names}")
        self.pilot_rows = np.sort(order[: self.pilot_size])

        self._transform_batch = self._make_transform()
        pilot = self.dataset.select(self.pilot_rows)
        self._pilot_images = [self._rgb(im) for im in pilot[image_column]]
        self._pilot_labels = self._columns(pilot, self.label_columns)
        self._pilot_attributes = self._columns(pilot, self.attributes)
        self._pilot_pixels = self._pixels(self._pilot_images)
        self._held_images = [self._rgb(im) for im in self.held_out[image_column]]
        self._held_pixels = self._pixels(self._held_images)
        self._held_labels = self._columns(self.held_out, self.label_columns)
        self._held_attributes = self._columns(self.held_out, self.attributes)
        self.steps: dict[float, LoopStep] = {}
        self.history: list[LoopStep] = []
        self._torch = torch

    # -- data helpers --------------------------------------------------------------------------------------------
    def _make_transform(self):
        from ..unlearning.data import make_transform

        return make_transform(self.image_processor)

    @staticmethod
    def _rgb(image):
        return image.convert("RGB")

    @staticmethod
    def _columns(ds, names) -> np.ndarray:
        return np.stack([np.asarray(ds[c]).astype(np.int64) for c in names], axis=1)

    def _pixels(self, images, batch_size: int = 64):
        import torch

        return torch.cat([self._transform_batch(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    def _unit_images(self, images):
        """`(N, 3, S, S)` in [0, 1] at the pipeline's resolution (the attacker's input)."""
        import torch

        size = self.pipe.image_size
        arrays = [np.asarray(im.convert("RGB").resize((size, size))) for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0

    # -- the loop ------------------------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """The current step's epsilon."""
        return float(self.controller.epsilon)

    def _release(self, images, epsilon: float):
        """Release ``images`` at ``epsilon``: privacy noise from the OS CSPRNG (the pipeline's default), stochastic
        codes from CSPRNG-seeded generators; nothing of it is recorded."""
        gens = [self._torch.Generator().manual_seed(secrets.randbits(63)) for _ in images]
        return self.pipe(images, attributes=self.attributes, epsilon=epsilon, delta=self.delta,
                         num_inference_steps=self.num_inference_steps, generator=gens, output_type="pil")

    def step(self) -> LoopStep:
        """The step at the current epsilon (computed once per epsilon, then served from the cache).

        Returns:
            `LoopStep`: previews, privacy figures and the model's consequence measured on the pilot.
        """
        eps = self.epsilon
        if eps in self.steps:
            return self.steps[eps]
        from ..unlearning import unlearn
        from .figures import measure_figures

        start = time.perf_counter()
        out = self._release(self._pilot_images, eps)
        released = list(out.images)
        rev_pixels = self._pixels(released)
        y = self._torch.as_tensor(self._pilot_labels, dtype=self._torch.float32)
        # the pilot is a miniature of accept: every one of its rows replaced, the classifier unlearned on all of them
        result = unlearn(self.classifier, (self._pilot_pixels, y), (rev_pixels, y), method=self.unlearning_method,
                         train_set=(rev_pixels, y), seed=self.seed, progress=self.progress)
        figures = measure_figures(
            result.model, self.classifier, label_names=self.label_columns, attributes=self.attributes, epsilon=eps,
            delta=self.delta, released_images=self._unit_images(released), released_attributes=self._pilot_attributes,
            released_labels=self._pilot_labels,
            held_out_pixels=self._held_pixels, held_out_labels=self._held_labels,
            held_out_attributes=self._held_attributes, member_pixels=self._pilot_pixels,
            member_labels=self._pilot_labels, attacker_epochs=self.attacker_epochs, seed=self.seed)
        figures["unlearning_seconds"] = result.seconds
        step = LoopStep(epsilon=eps, delta=self.delta, privacy=out.report.to_dict(),
                        previews=released[: self.num_previews], figures=figures,
                        seconds=time.perf_counter() - start)
        self.steps[eps] = step
        return step

    def feedback(self, verdict: str, **accept_kwargs):
        """Answer the current step.

        Args:
            verdict (`str`): ``"more_privacy"`` (a smaller epsilon), ``"more_utility"`` (a larger one) or
                ``"accept"`` (then ``accept(**accept_kwargs)`` runs and its `LoopResult` is returned).

        Returns:
            `LoopStep` (the next step) or `LoopResult` (after ``"accept"``).

        Raises:
            ValueError: for an unknown verdict.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got verdict={verdict!r}")
        if verdict == "accept":
            return self.accept(**accept_kwargs)
        current = self.step()
        self.history.append(LoopStep(**{**current.__dict__, "verdict": verdict}))
        proposal = self.controller.propose(_CONTROLLER_VERDICT[verdict])
        if not self.controller.moved(proposal):
            logger.warning("epsilon stays at %g: the search cannot move further that way", self.epsilon)
        self.controller = proposal
        return self.step()

    def accept(self, output_dir, *, ledger: Any = None, budget_epsilon: float = 10.0, batch_size: int = 16,
               model_repo: str | None = None, dataset_repo: str | None = None):
        """Protect the whole dataset once at the current epsilon, unlearn the classifier and write the results.

        The release draws **fresh** noise from the OS CSPRNG: no preview is reused, even one the owner liked. A
        preview chosen by looking at the originals (keeping the draw that happened to hide the attribute best, or
        that kept the most of it) is a function of the originals beyond the mechanism's output, so the Gaussian
        mechanism's guarantee would no longer hold for it; a fresh draw is exactly one run of the mechanism.

        Args:
            output_dir (`str` or `Path`): the folder (see the module docstring); refused if it already holds
                ``release/``, ``model/``, ``loop.json`` or ``private/``.
            ledger (`PrivacyLedger` or `str`, *optional*): the ledger charged (default: a new one in
                ``OUT/private/ledger.sqlite`` with ``budget_epsilon``); a charge that would exceed a subject's budget
                is refused before anything is released.
            batch_size (`int`): images per batch of the release.
            model_repo, dataset_repo (`str`, *optional*): Hub ids the model card names (for `LoopResult.push_to_hub`).

        Returns:
            `LoopResult`.
        """
        from .accept import check_output_dir, run_accept

        check_output_dir(output_dir)  # before the verdict is recorded: a refused accept changes nothing
        current = self.step()  # the figures of the accepted epsilon are in the record, as for every step
        self.history.append(LoopStep(**{**current.__dict__, "verdict": "accept"}))
        self.controller = self.controller.propose("accept")
        return run_accept(self, output_dir, ledger=ledger, budget_epsilon=budget_epsilon, batch_size=batch_size,
                          model_repo=model_repo, dataset_repo=dataset_repo)

    def subject_ids(self) -> list[str]:
        """The subject of each row of ``dataset``: the ``subject_column``'s value, else one subject per row."""
        if self.subject_column is None:
            return [f"row-{i}" for i in range(len(self.dataset))]
        return [str(v) for v in self.dataset[self.subject_column]]

    def record(self) -> dict:
        """Every step answered so far (epsilon, figures, verdict), oldest first; JSON-ready."""
        return {"attributes": self.attributes, "label_columns": self.label_columns, "delta": self.delta,
                "pilot_size": self.pilot_size, "held_out_size": len(self.held_out),
                "held_out": "given" if self.held_out_rows is None else "a fraction of the dataset",
                "unlearning_method": self.unlearning_method,
                "steps": [s.to_dict() for s in self.history]}
