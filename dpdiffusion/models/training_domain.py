"""What a model was trained on: its *training domain*, declared in the pipeline's ``model_index.json`` and its card.

A diffusion autoencoder only knows the images it was trained on. The embedded default was trained on SynthFaces
(cartoon faces drawn by ``dpdiffusion.data.synthfaces``, 32 px): given a photograph of a real person it encodes the
face into the nearest cartoon and decodes that, so ``faces="detect"`` would paste a blurred 32 px cartoon over every
real face. The domain is therefore part of the model, public like its architecture:

- ``DPDiffusionPipeline(..., training_domain=...)`` registers it in the pipeline's config; ``save_pretrained`` writes
  it to ``model_index.json`` (``"training_domain": {"name", "resolution", "synthetic", "description"}``) and
  ``from_pretrained`` reads it back; ``pipe.training_domain`` is a `TrainingDomain`.
- the embedded default and models the trainer makes on SynthFaces: `synthfaces_domain`; a converted official DiffAE
  checkpoint: `official_diffae_domain` (FFHQ, CelebA-HQ, ... at its resolution); another dataset given to the
  trainer: `dataset_domain`. A folder saved before models declared it (or by other code) loads as `UNKNOWN_DOMAIN`.
- photos of real people with a synthetic-domain model are refused by default (`check_photo_domain`: the pipeline's
  ``faces="detect"``, ``dpdiffusion protect --faces detect`` and the Space's photo mode) with a message that says
  what the model is and gives the two commands that make a real-face pipeline; an explicit opt-in
  (``allow_domain_mismatch``) still runs it, to test the plumbing.

What this releases: only facts about the model (its training set's name and resolution), never about an image.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["DomainMismatchError", "OFFICIAL_DIFFAE_DOMAINS", "REAL_FACE_COMMANDS", "TrainingDomain", "UNKNOWN_DOMAIN",
           "check_photo_domain", "dataset_domain", "official_diffae_domain", "official_domain_key",
           "photo_refusal_message", "synthfaces_domain"]


@dataclass(frozen=True)
class TrainingDomain:
    """The images a model was trained on.

    Args:
        name (`str`): the training set (``"SynthFaces"``, ``"FFHQ"``, ``"CelebA-HQ"``, ...; ``"unknown"`` when the
            model does not say).
        resolution (`int` or `None`): the training images' side in px (`None` when unknown).
        synthetic (`bool`): the training images are synthetic (no photograph of a real person); such a model cannot
            represent a real face.
        description (`str`): one or two sentences for people (the model card, the refusal).
    """

    name: str
    resolution: int | None
    synthetic: bool
    description: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"training_domain name must be a non-empty str, got name={self.name!r}")
        if self.resolution is not None and (isinstance(self.resolution, bool) or not isinstance(self.resolution, int)
                                            or self.resolution < 1):
            raise ValueError(f"training_domain resolution must be None or an integer >= 1 (px), got "
                             f"resolution={self.resolution!r}")
        if not isinstance(self.synthetic, bool):
            raise ValueError(f"training_domain synthetic must be True or False, got synthetic={self.synthetic!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"training_domain description must be a str, got description={self.description!r}")

    @property
    def known(self) -> bool:
        """Whether the model declares its domain (``name != "unknown"``)."""
        return self.name != UNKNOWN_NAME

    def to_dict(self) -> dict:
        """The JSON form stored in ``model_index.json`` and the card's front matter."""
        return asdict(self)

    def summary(self) -> str:
        """One line: ``"SynthFaces, 32 px, synthetic"`` / ``"FFHQ, 256 px, real photographs"`` / ``"unknown"``."""
        if not self.known:
            return UNKNOWN_NAME
        size = f", {self.resolution} px" if self.resolution is not None else ""
        return f"{self.name}{size}, {'synthetic' if self.synthetic else 'real photographs'}"

    @classmethod
    def from_config(cls, value: Any) -> "TrainingDomain":
        """A `TrainingDomain` from what a config holds: `None` (not declared: `UNKNOWN_DOMAIN`), a mapping with the
        four fields, or a `TrainingDomain`.

        Raises:
            ValueError: naming ``training_domain`` for anything else (a missing or unknown field, a bad value).
        """
        if value is None:
            return UNKNOWN_DOMAIN
        if isinstance(value, TrainingDomain):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"training_domain must be None, a TrainingDomain or a dict with name, resolution, "
                             f"synthetic and description, got training_domain={value!r}")
        fields = {"name", "resolution", "synthetic", "description"}
        if set(value) != fields:
            raise ValueError(f"training_domain must have exactly the fields {sorted(fields)}, got {sorted(value)}")
        return cls(**{k: value[k] for k in fields})


UNKNOWN_NAME = "unknown"
UNKNOWN_DOMAIN = TrainingDomain(
    name=UNKNOWN_NAME, resolution=None, synthetic=False,
    description="This model does not declare what it was trained on (saved before models declared their training "
                "domain, or by other code); its model card may say.")


def synthfaces_domain(resolution: int) -> TrainingDomain:
    """SynthFaces at ``resolution`` px: the embedded default and models the trainer makes on ``"synthfaces"``."""
    return TrainingDomain(
        name="SynthFaces", resolution=int(resolution), synthetic=True,
        description=f"SynthFaces: synthetic cartoon faces drawn by dpdiffusion.data.synthfaces at {int(resolution)} "
                    "px, with known attributes; no photograph of a real person. A reference model for tests and "
                    "demonstrations: it cannot represent a real face.")


# the official DiffAE checkpoints' training sets (templates.py: data_name / name), key -> (name, faces, description)
OFFICIAL_DIFFAE_DOMAINS = {
    "ffhq": ("FFHQ", "Flickr-Faces-HQ: 70,000 photographs of real people's faces from Flickr, aligned"),
    "celeba-hq": ("CelebA-HQ", "CelebA-HQ: 30,000 photographs of celebrities' faces, aligned"),
    "celeba": ("CelebA", "CelebA: photographs of celebrities' faces, aligned and cropped"),
    "lsun-horse": ("LSUN horse", "LSUN horse: photographs of horses (not faces)"),
    "lsun-bedroom": ("LSUN bedroom", "LSUN bedroom: photographs of bedrooms (not faces)"),
}


def official_domain_key(hparams: Mapping[str, Any]) -> str | None:
    """The `OFFICIAL_DIFFAE_DOMAINS` key of an official checkpoint from its ``hyper_parameters`` (``data_name``,
    e.g. ``ffhqlmdb256``, else ``name``, e.g. ``ffhq256_autoenc``); `None` when neither names a known set."""
    for field in ("data_name", "name"):
        text = str(hparams.get(field) or "").lower().replace("-", "").replace("_", "")
        for marker, key in (("ffhq", "ffhq"), ("celebahq", "celeba-hq"), ("celeba", "celeba"),
                            ("horse", "lsun-horse"), ("bedroom", "lsun-bedroom")):
            if marker in text:
                return key
    return None


def official_diffae_domain(key: str, resolution: int) -> TrainingDomain:
    """The domain of an official DiffAE checkpoint trained on `key` (`OFFICIAL_DIFFAE_DOMAINS`) at ``resolution`` px.

    Raises:
        ValueError: an unknown ``key``.
    """
    if key not in OFFICIAL_DIFFAE_DOMAINS:
        raise ValueError(f"domain must be one of {sorted(OFFICIAL_DIFFAE_DOMAINS)}, got domain={key!r}")
    name, what = OFFICIAL_DIFFAE_DOMAINS[key]
    return TrainingDomain(
        name=name, resolution=int(resolution), synthetic=False,
        description=f"{what}; the official Diffusion Autoencoder checkpoint (Preechakul et al. 2022, "
                    f"https://github.com/phizaz/diffae) at {int(resolution)} px.")


def dataset_domain(dataset: str, resolution: int) -> TrainingDomain:
    """The domain of a model ``dpdiffusion train`` made on ``dataset`` (its ``--dataset``) at ``resolution`` px.

    ``"synthfaces"``: `synthfaces_domain`. A Hub dataset keeps its id; a local folder is named ``"a local dataset"``
    (its path is the owner's, and the domain is published with the model)."""
    if dataset == "synthfaces":
        return synthfaces_domain(resolution)
    local = os.path.exists(dataset) or os.path.isabs(dataset) or dataset.startswith(("~", "."))
    name = "a local dataset" if local else dataset
    return TrainingDomain(
        name=name, resolution=int(resolution), synthetic=False,
        description=f"Trained with dpdiffusion train on {name if not local else 'a local image dataset'} at "
                    f"{int(resolution)} px.")


# How to make a real-face pipeline: the official FFHQ256 checkpoint, converted (scripts/convert_diffae_checkpoint.py)
REAL_FACE_CHECKPOINT = "ffhq256-dp"
REAL_FACE_COMMANDS = (
    "python scripts/convert_diffae_checkpoint.py --checkpoint ffhq256_autoenc/last.ckpt "
    "--latent-stats ffhq256_autoenc/latent.pkl --classifier ffhq256_autoenc_cls/last.ckpt "
    f"--output {REAL_FACE_CHECKPOINT}",
    f"dpdiffusion protect --model {REAL_FACE_CHECKPOINT} --faces detect --attributes Male --source PHOTOS "
    "--output-dir PROTECTED",
)


class DomainMismatchError(ValueError):
    """Photos of real people given to a model trained only on synthetic faces (see `check_photo_domain`)."""


def photo_refusal_message(domain: TrainingDomain, *, what: str = "faces='detect'",
                          opt_in: str = "allow_domain_mismatch=True", use_command: str | None = None,
                          markdown: bool = False) -> str:
    """Why photos of real people are refused with a synthetic-domain model, and what to do instead.

    Args:
        domain (`TrainingDomain`): the model's domain (synthetic).
        what (`str`): what was refused, as the caller wrote it (``"faces='detect'"``, ``"--faces detect"``, ...).
        opt_in (`str`): how this surface opts in (``"allow_domain_mismatch=True"``, ``"--allow-domain-mismatch"``).
        use_command (`str`, *optional*): the second command (default: ``dpdiffusion protect --model ffhq256-dp ...``).
        markdown (`bool`): the commands in a fenced code block (for the Space) instead of indented lines.
    """
    size = f"{domain.resolution} px" if domain.resolution is not None else "its training resolution"
    kind = "cartoon" if domain.name == "SynthFaces" else "synthetic"
    second = use_command or REAL_FACE_COMMANDS[1]
    commands = (f"\n```bash\n{REAL_FACE_COMMANDS[0]}\n{second}\n```\n" if markdown
                else f"\n    {REAL_FACE_COMMANDS[0]}\n    {second}\n")
    return (
        f"{what} is refused: this model was trained only on {domain.name}, synthetic {kind} faces at {size} (no "
        f"photograph of a real person), so on a real photo it would paste a blurred {size} {kind} face over each real "
        "face. To protect real photos, make a real-face pipeline from the official Diffusion Autoencoder checkpoint "
        "(FFHQ, 256 px: download ffhq256_autoenc/ and ffhq256_autoenc_cls/ from https://github.com/phizaz/diffae), "
        f"then use it:{commands}"
        f"To run this model on photos anyway, only to test the plumbing (every face comes back as a {kind}), pass "
        f"{opt_in}.")


def check_photo_domain(domain: TrainingDomain, *, allow_domain_mismatch: bool = False, what: str = "faces='detect'",
                       opt_in: str = "allow_domain_mismatch=True", use_command: str | None = None) -> None:
    """Refuse photos of real people for a model trained only on synthetic faces, unless the caller opts in.

    Args:
        domain (`TrainingDomain`): the model's domain; only a synthetic one is refused (an unknown one is not).
        allow_domain_mismatch (`bool`): run anyway (to test the plumbing).
        what, opt_in, use_command: the wording of the refusal (`photo_refusal_message`).

    Raises:
        ValueError: ``allow_domain_mismatch`` is not a bool.
        DomainMismatchError: (a ``ValueError``) a synthetic domain without the opt-in.
    """
    if not isinstance(allow_domain_mismatch, (bool, np.bool_)):
        raise ValueError(f"allow_domain_mismatch must be True or False, got "
                         f"allow_domain_mismatch={allow_domain_mismatch!r}")
    if domain.synthetic and not allow_domain_mismatch:
        raise DomainMismatchError(photo_refusal_message(domain, what=what, opt_in=opt_in, use_command=use_command))
