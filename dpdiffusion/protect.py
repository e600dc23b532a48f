"""Protect a whole dataset: stream it through ``DPDiffusionPipeline`` and write an image folder with metadata.

What leaves the system (docs/threat-model.md): two folders, one to publish and one the data owner keeps.

``output_dir`` -- safe to publish; an ``imagefolder`` that ``datasets.load_dataset("imagefolder", data_dir=out)``
reads, and nothing else (no hidden file once a run has finished)::

    out/images/00000042.png      one protected image per released row (named by the row's position in the source)
    out/metadata.jsonl           per image: index (the row's position), file_name, every privacy figure of the
                                 release (epsilon, delta, sigmas, noise_source, guarantee, ...), with --faces detect
                                 each face's paste box and privacy figures (nothing the detector computed from the
                                 original face: no confidence, box, landmarks or alignment quad), and ONLY the input
                                 columns named in ``keep_columns`` (default none)

``private_dir`` -- the owner's bookkeeping, never to be published (default ``<output_dir>-private`` next to it;
created with mode 0700, its files 0600, whatever the umask)::

    private/protect_config.json  the run's settings (the source path, the model; in the seeded mode the seed); a
                                 resumed run must use the same ones (a folder that released nothing yet takes a
                                 rerun's corrected settings instead)
    private/skipped.jsonl        rows not released: unreadable (corrupt, truncated, not an image, too small or too
                                 large; with the source path when known), no face (--faces detect), or released
                                 before and their image lost; with the reason
    private/.parts/              resume state: per-process records while running (worker-R.jsonl, skipped-R.jsonl,
                                 merged into metadata.jsonl and skipped.jsonl at the end) and the merge's temporaries

Columns: an input column reaches the release only when named in ``keep_columns`` (utility labels, e.g. smiling).
Refused before anything is written, with a ``ValueError`` naming ``keep_columns`` and the columns it may name (column
names only, never a cell's value; `dpdiffusion.protect_columns`): a protected attribute's column however it is spelt
(names compared after Unicode NFKC and casefolding, keeping only letters and digits, so ``dark.skin``, ``Dark-Skin``
and a fullwidth ``ｄａｒｋ＿ｓｋｉｎ`` are ``dark_skin``; with ``scope="latent"`` every attribute of the model), a
name containing one (``Is_Dark_Skin``), a CelebA look-alike of one (``Pale_Skin`` for ``dark_skin``), a column whose
values are a one-to-one relabelling of a protected attribute's column present in the source (checked in one pass
over the metadata of the rows to release, images not decoded), ``identity`` and ``seed`` in any dataset (a person's
identity links their releases; SynthFaces' ``identity`` and ``seed`` with the row's ``index`` re-render the original
bit for bit), anything holding an image (the image column, an image nested in a list or struct, raw bytes, a struct
with ``bytes`` or ``path``), a name the record itself uses (``index``, ``file_name``, ``faces``, a privacy figure)
and an unknown column. Another attribute of the model, not protected in this run, may be kept (utility).

Row positions: the record's ``index`` and the image names are the row's position in the source: shuffle a source
whose order is itself sensitive. Rows not released (unreadable, or with ``--faces detect`` a photo in which no face
was found) leave gaps in the published indices: a recipient learns that those rows did not decode or held no face
the detector found.

SynthFaces (a source with the generator columns ``index``, ``identity`` and ``seed``; `SYNTHFACES_WARNING`, logged
once and printed by the CLI): synthetic faces of no real person, rendered from the generator's seed and the row's
position. Anyone who knows or guesses the seed (``make_synthfaces`` defaults to 0; a small seed is found by trying
them, in seconds) re-renders every original, protected attributes included, from the ``index`` each record carries:
withholding ``identity`` and ``seed`` does not prevent it. Such a release demonstrates the mechanism; it protects no
one.

Streaming: rows are read one batch at a time (a ``save_to_disk`` folder as a stream of its Arrow shards, not a memory
map) and the part files are merged by a k-way merge of index-sorted runs, so memory stays flat in the dataset size.
Privacy noise: from the OS CSPRNG (a private release), unless ``insecure_seed`` is given (``--insecure-seed N``): then
row ``i``'s privacy noise and stochastic code come from a generator seeded by ``(N, i)``, anyone holding N (recorded
in the private ``protect_config.json``) can replay the noise, and every published record says
``noise_source="seeded"`` and ``guarantee="none (reproducible noise)"``. In the default mode nothing written to either
folder lets anyone recompute the noise (the stochastic codes come from generators seeded by the CSPRNG and are not
recorded).

Crash safety, and each row released once: each image is written to a temporary file and renamed (atomic), and only
then is its record appended (flushed and fsync'ed) to the worker's part file in ``private_dir/.parts``. A rerun reads
its state from ``private_dir`` and keeps every image already written: a row with an image and a record is done; a
row whose image was written but whose record was lost in a crash gets its record back without being recomputed; a row
whose record exists but whose image file has gone is *not* released a second time with other noise (it is listed in
the private ``skipped.jsonl``). Only the remaining rows are protected. A release folder whose ``private_dir`` holds no
state of it (another ``--private-dir``, or the private folder deleted) is refused rather than resumed blind, and so is
a resume with other settings or another model (the recorded model: an embedded one by name, a folder by its real path,
a Hub id; a config written before the model was recorded is taken to be this run's and upgraded). Every argument, the
step count against the model's sampler and the source (its split and image column) are checked before either folder
is created. An existing ``private_dir`` that other local users may enter is used as it is, with a warning.
With ``insecure_seed``, batches are fixed blocks of ``batch_size`` consecutive rows (of the worker's share), a partly
done block being recomputed whole, so that a run killed at any point (even SIGKILL) and resumed with the same
``batch_size`` writes the same files, byte for byte, as an uninterrupted one (a different ``batch_size`` may change
pixel values by float rounding); a recomputed row's image is then the same release, and a lost one is rewritten.
Stale temporary files of killed runs (next to the images and ``metadata.jsonl``) are removed at the end, so a
finished ``output_dir`` holds none. Under ``accelerate launch`` process ``R`` of ``W`` takes the rows ``i`` with
``i % W == R`` (data-parallel).

Folders of earlier versions, which kept ``.parts/``, ``protect_config.json``, ``skipped.jsonl`` and every input
column inside the output folder, are refused with the steps to resume them in this layout (move the three into
``private_dir`` and rerun: the images already released are kept, and ``metadata.jsonl`` is rewritten with only the
privacy figures and the ``keep_columns`` columns).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import secrets
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import PIL.Image
from tqdm.auto import tqdm

if TYPE_CHECKING:  # torch is imported where it is used: `dpdiffusion protect --help` stays fast
    import torch

from .models.steps import DEFAULT_INVERSION_STEPS, DEFAULT_NUM_INFERENCE_STEPS, resolve_num_inference_steps
from .protect_columns import RECORD_KEYS, check_keep_columns, jsonable, protected_column_keys

logger = logging.getLogger(__name__)


@dataclass
class ProtectConfig:
    """Settings of ``protect_dataset`` (also ``dpdiffusion protect``)."""

    source: str = field(metadata={"help": (
        "Image folder (optionally with metadata.csv/jsonl), a save_to_disk folder, one image file (read as a folder "
        "holding only it) or a Hub dataset id.")})
    output_dir: str = field(metadata={"help": (
        "Release folder, safe to publish: images/ and metadata.jsonl (file_name, each image's privacy figures and "
        "only the --keep-columns columns); an imagefolder that datasets.load_dataset reads.")})
    private_dir: str | None = field(default=None, metadata={"help": (
        "The data owner's folder, never to be published (mode 0700): the run's settings (protect_config.json: the "
        "source path, the model and, with --insecure-seed, the seed), the resume state (.parts/) and skipped.jsonl "
        "(rows not released, with their source paths). Default: <output-dir>-private next to the output folder. It "
        "must be outside the output folder, and the output folder outside it; a rerun reads its state from it. An "
        "existing folder is used as it is (a warning if other users may enter it).")})
    keep_columns: list[str] | None = field(default=None, metadata={"help": (
        "Input columns copied next to each release in metadata.jsonl (utility labels, e.g. smiling); default none. "
        "Refused before anything is written: a protected attribute's column however it is spelt (only letters and "
        "digits compared; with --scope latent every attribute of the model), a name containing one, a CelebA "
        "look-alike of one (Pale_Skin for dark_skin), a column that relabels a protected column of the source one to "
        "one, identity and seed (always), anything holding an image or raw bytes, a name the record uses itself "
        "(index, file_name, faces, a privacy figure) and an unknown column.")})
    attributes: list[str] | None = field(default=None, metadata={"help": "Attributes to protect (default: the model's dark_skin, long_hair)."})
    weights: list[float] | None = field(default=None, metadata={"help": "Positive budget shares of the attributes."})
    epsilon: float = field(default=1.0, metadata={"help": "Epsilon of each image's release (> 0; inf disables noise)."})
    delta: float = field(default=1e-5, metadata={"help": "Delta of each image's release, in (0, 1)."})
    scope: str = field(default="attributes", metadata={"help": "'attributes' or 'latent'."})
    stochastic_code: str = field(default="random", metadata={"help": "'random' (formal) or 'inverted' (heuristic)."})
    num_inference_steps: int | None = field(default=None, metadata={
        "help": f"DDIM steps (default {DEFAULT_NUM_INFERENCE_STEPS} with a random code, {DEFAULT_INVERSION_STEPS} with "
                "'inverted': measured on the embedded default, see dpdiffusion.models.steps)."})
    batch_size: int = field(default=16, metadata={"help": "Images per batch."})
    insecure_seed: int | None = field(default=None, metadata={"help": (
        "Reproducible noise for tests and research, NOT a private release: row i's privacy noise and stochastic "
        "code come from a generator seeded by (N, i), and every record says noise_source='seeded'. Omit it for a "
        "private release (privacy noise from the OS CSPRNG).")})
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset or image folder."})
    image_column: str = field(default="image", metadata={"help": "Image column."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N rows."})
    faces: str = field(default="aligned", metadata={"help": (
        "'aligned': every row is an aligned face crop. 'detect': every row is a photo; each face is detected, "
        "FFHQ-aligned, protected and pasted back (the rest of the photo unchanged); a photo with no face goes to "
        "the private skipped.jsonl, never to the output. Needs the 'faces' extra.")})
    min_face_size: int = field(default=48, metadata={"help": "With --faces detect: smallest face protected (px)."})
    min_confidence: float = field(default=0.5, metadata={"help": "With --faces detect: smallest detector score."})
    allow_domain_mismatch: bool = field(default=False, metadata={"flag": True, "help": (
        "With --faces detect: run a model trained only on synthetic faces (the embedded default: SynthFaces, 32 px "
        "cartoons) on photos anyway, only to test the plumbing: every face comes back as a cartoon. Without it such "
        "a model is refused before anything is written, with the commands that make a real-face pipeline.")})

    @property
    def secure_mode(self) -> bool:
        """Whether the privacy noise comes from the OS CSPRNG (no ``insecure_seed``)."""
        return self.insecure_seed is None


def _row_generator(seed: int, index: int) -> torch.Generator:
    import torch

    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _open_saved(src: Path, split: str):
    """A ``save_to_disk`` folder read as a stream of its Arrow shards (not memory-mapped: a memory map would keep
    every page read so far in the resident set, which then grows with the dataset)."""
    import datasets

    if (src / "dataset_dict.json").exists():
        splits = json.loads((src / "dataset_dict.json").read_text())["splits"]
        if split not in splits:
            raise ValueError(f"split={split!r} is not a split of {src}; splits are {splits}")
        src = src / split
    state = json.loads((src / "state.json").read_text())
    files = [str(src / f["filename"]) for f in state["_data_files"]]
    return datasets.load_dataset("arrow", data_files=files, split="train", streaming=True)


def _open_source(config: ProtectConfig):
    """The source as a stream whose image column stays undecoded (nothing is materialised)."""
    import datasets

    from .data.sources import source_kind

    kind = source_kind(config.source)  # a slip (no such path, not an image, no Hub id) is refused before the Hub
    src = Path(config.source)
    if kind == "saved":
        ds = _open_saved(src, config.split)
    elif kind == "folder":
        ds = datasets.load_dataset("imagefolder", data_dir=str(src), split=config.split, streaming=True)
    elif kind == "file":  # one image: a folder holding only it (no metadata file is read)
        ds = datasets.load_dataset("imagefolder", data_files={config.split: [str(src)]}, split=config.split,
                                   streaming=True)
    else:
        try:
            ds = datasets.load_dataset(os.fspath(config.source), split=config.split, streaming=True)
        except OSError as exc:  # not found, or the Hub out of reach: say why the Hub was asked at all
            raise OSError(f"source={os.fspath(config.source)!r} is no local file or folder, so it was looked up as a "
                          f"Hub dataset id: {exc}") from exc
    if config.image_column not in (ds.column_names or [config.image_column]):
        raise ValueError(f"image_column={config.image_column!r} is not a column of {config.source}; "
                         f"columns are {ds.column_names}")
    return ds.cast_column(config.image_column, datasets.Image(decode=False))


def _iter_rows(config: ProtectConfig, ds=None) -> Iterator[tuple[int, dict]]:
    """Yield ``(index, row)`` without materialising the dataset; images stay undecoded until used."""
    for i, row in enumerate(_open_source(config) if ds is None else ds):
        if config.limit is not None and i >= config.limit:
            return
        yield i, row


def _source_columns(ds) -> list[str]:
    return list(ds.column_names or next(iter(ds), {}).keys())  # a stream that does not say: its first row's


def _check_keep_columns(config: ProtectConfig, ds, *, protected: dict, figures: dict) -> list[str]:
    """The columns of ``config.keep_columns``, checked against the source before anything is written
    (`dpdiffusion.protect_columns`): by name and type, then by content in one pass over the released rows' metadata
    (only the columns needed are selected: the images are neither read into the check nor decoded)."""

    def rows(columns: list[str]):
        selected = ds.select_columns(columns)
        for i, row in enumerate(selected):
            if config.limit is not None and i >= config.limit:
                return
            yield row

    return check_keep_columns(list(config.keep_columns), _source_columns(ds), dict(ds.features or {}),
                              image_column=config.image_column, protected=protected, figures=figures, rows=rows)


# SynthFaces' generator columns (dpdiffusion/data/synthfaces.py): a source that has all three was made by
# make_synthfaces, whose images re-render from the generator's seed and the row's position.
SYNTHFACES_GENERATOR_COLUMNS = ("index", "identity", "seed")
SYNTHFACES_WARNING = (
    "the source has SynthFaces' generator columns (index, identity, seed): it is synthetic data (no real person). "
    "Anyone who knows or guesses the generator's seed (make_synthfaces defaults to seed 0; a small seed is found by "
    "trying them) re-renders every original image, and with it every protected attribute, from the row's position "
    "that each record carries; withholding identity and seed does not prevent it. This release demonstrates the "
    "mechanism and protects no one.")


def is_synthfaces_source(columns) -> bool:
    """Whether a source with these columns is a SynthFaces dataset (`SYNTHFACES_GENERATOR_COLUMNS`)."""
    return set(SYNTHFACES_GENERATOR_COLUMNS) <= set(columns)


def _model_name(pipe) -> str | None:
    """The model a release was made with, as the private ``protect_config.json`` records it: an embedded model by
    its name, a local folder by its real path, a Hub repo by its id; ``None`` for a pipeline built in memory."""
    from .models.default import EMBEDDED_MODELS

    name = getattr(pipe, "name_or_path", None) or dict(getattr(pipe, "config", {}) or {}).get("_name_or_path")
    if not name:
        return None
    name = os.fspath(name)
    if os.path.isdir(name):
        real = os.path.realpath(name)
        embedded = {os.path.realpath(folder): key for key, (folder, *_) in EMBEDDED_MODELS.items()}
        return embedded.get(real, real)
    return name


def _check_steps(pipe, num_inference_steps: int) -> None:
    """The step count against the model's sampler, as its decode would check it (before anything is written).

    Raises:
        ValueError: for the official DiffAE architecture, a count its respaced grid cannot reach (e.g. 1); for
            another model, more steps than the scheduler's training steps.
    """
    from .models.diffae import _is_official

    total = int(pipe.scheduler.config.num_train_timesteps)
    if _is_official(pipe.unet):
        from .models.diffae_sampler import official_timesteps

        official_timesteps(total, num_inference_steps)
    elif num_inference_steps > total:
        raise ValueError(f"num_inference_steps must be at most the scheduler's num_train_timesteps={total}, got "
                         f"num_inference_steps={num_inference_steps}")


def private_dir_for(config: ProtectConfig) -> Path:
    """``config.private_dir``, or by default ``<output_dir>-private`` next to the output folder."""
    if config.private_dir is not None:
        return Path(config.private_dir)
    out = Path(os.path.abspath(config.output_dir))
    return out.with_name(out.name + "-private")


def _check_folders(out: Path, private: Path, source: str) -> None:
    """Refuse folders that would publish the originals or the owner's bookkeeping, a release folder of an earlier
    version (which kept the bookkeeping inside), and a release whose resume state is not where this run looks."""
    real_out, real_private = Path(os.path.realpath(out)), Path(os.path.realpath(private))
    if os.path.isdir(source):
        real_src = Path(os.path.realpath(source))
        if real_src == real_out or real_src in real_out.parents or real_out in real_src.parents:
            raise ValueError(f"output_dir must be outside the source folder and not contain it (the release would sit "
                             f"with the originals), got output_dir={str(out)!r} and source={source!r}")
    elif os.path.isfile(source) and real_out in Path(os.path.realpath(source)).parents:
        raise ValueError(f"output_dir must not contain the source file (the release would sit with the original), "
                         f"got output_dir={str(out)!r} and source={source!r}")
    if real_private == real_out or real_out in real_private.parents:
        raise ValueError(f"private_dir must be outside output_dir (everything in output_dir is for publication), got "
                         f"private_dir={str(private)!r} and output_dir={str(out)!r}")
    if real_private in real_out.parents:
        raise ValueError(f"output_dir must be outside private_dir (the release would sit among the owner's "
                         f"bookkeeping), got output_dir={str(out)!r} inside private_dir={str(private)!r}")
    legacy = [name for name in (".parts", "protect_config.json", "skipped.jsonl") if (out / name).exists()]
    if legacy:
        moved = " ".join(shlex.quote(str(out / name)) for name in legacy)
        target = shlex.quote(str(private))
        raise ValueError(
            f"output_dir={str(out)!r} was written by an earlier dpdiffusion protect, which kept its bookkeeping "
            f"({', '.join(legacy)}: source paths, and with --insecure-seed the seed) and every input column inside "
            f"the release folder: do not publish it as it is. To finish it in the new layout, keeping every image "
            f"already released: mkdir -p -m 700 {target} && mv {moved} {target}/ ; then rerun the same command "
            f"(metadata.jsonl is rewritten with only the privacy figures and the --keep-columns columns)")
    if _holds_release(out) and not any((private / ".parts").glob("worker-*.jsonl")):
        raise ValueError(
            f"output_dir={str(out)!r} already holds released images, but private_dir={str(private)!r} holds no "
            f"resume state of them (.parts/worker-*.jsonl); pass the --private-dir it was written with (a rerun reads "
            f"its state there, so as never to release a row twice), or use a new output_dir")


def _decode(value: Any) -> PIL.Image.Image:
    if isinstance(value, PIL.Image.Image):
        return value
    data = value.get("bytes") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else None
    if not data and not path:
        raise ValueError("the row has no image (no bytes and no path)")
    img = PIL.Image.open(io.BytesIO(data)) if data else PIL.Image.open(path)
    w, h = img.size  # from the header: refuse a huge image before decoding its pixels
    from .data.images import MAX_IMAGE_PIXELS

    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"the image is {w}x{h} px; at most {MAX_IMAGE_PIXELS} pixels are accepted")
    img.load()  # raises on truncated files
    return img


def _check_config(config: ProtectConfig) -> None:
    """Validate the non-privacy settings (the privacy ones go through ``pipe.privacy_spec``)."""
    for name in ("source", "output_dir", "split", "image_column"):
        value = getattr(config, name)
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise ValueError(f"{name} must be a non-empty str, got {name}={value!r}")
    if config.private_dir is not None and (not isinstance(config.private_dir, (str, os.PathLike))
                                           or not os.fspath(config.private_dir)):
        raise ValueError(f"private_dir must be None or a non-empty str, got private_dir={config.private_dir!r}")
    keep = config.keep_columns
    if keep is not None and (isinstance(keep, (str, bytes)) or not isinstance(keep, (list, tuple))
                             or not all(isinstance(c, str) and c for c in keep)):
        raise ValueError(f"keep_columns must be None or a list of column names, got keep_columns={keep!r}")
    resolve_num_inference_steps(config.num_inference_steps, config.stochastic_code)  # None: the code's default
    if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got batch_size={config.batch_size!r}")
    if config.insecure_seed is not None and (isinstance(config.insecure_seed, bool)
                                             or not isinstance(config.insecure_seed, int)):
        raise ValueError(f"insecure_seed must be None or an integer, got insecure_seed={config.insecure_seed!r}")
    from .faces.photos import check_face_arguments, check_faces_mode

    check_faces_mode(config.faces)
    check_face_arguments(config.min_face_size, config.min_confidence)
    if config.limit is not None and (isinstance(config.limit, bool) or not isinstance(config.limit, int)
                                     or config.limit < 0):
        raise ValueError(f"limit must be None or an integer >= 0, got limit={config.limit!r}")


def _check_domain(pipe, config: ProtectConfig) -> None:
    """``--faces detect`` with a model trained only on synthetic faces: refused (a ``ValueError`` naming the model's
    domain and the two commands that make a real-face pipeline) unless ``allow_domain_mismatch``."""
    from .models.training_domain import TrainingDomain, check_photo_domain

    if config.faces != "detect":
        return
    domain = getattr(pipe, "training_domain", None)
    check_photo_domain(domain if isinstance(domain, TrainingDomain) else TrainingDomain.from_config(None),
                       allow_domain_mismatch=config.allow_domain_mismatch, what="--faces detect",
                       opt_in="--allow-domain-mismatch")


def _private_fd(path: Path, flags: int) -> int:
    """Open (creating) a file of the private folder, mode 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _make_private_dir(path: Path) -> None:
    """Create a folder of the private side with mode 0700 whatever the umask (an existing one is left as it is)."""
    try:
        path.mkdir(parents=True)
    except FileExistsError:
        return
    os.chmod(path, 0o700)


def _warn_if_shared(private: Path) -> None:
    """Warn when an existing private folder (or its ``.parts``) lets other local users in; a user's own folder is
    not chmod'ed behind their back."""
    import stat

    for folder in (private, private / ".parts"):
        if folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) & 0o077:
            logger.warning("private_dir %s has mode %o: other local users can list or read the owner's bookkeeping "
                           "(source paths; with --insecure-seed the seed); it is left as it is: chmod 700 it",
                           folder, stat.S_IMODE(folder.stat().st_mode))


def _holds_release(out: Path) -> bool:
    """Whether ``out`` holds a released image or record (an empty ``metadata.jsonl`` of a run that released nothing
    does not count)."""
    meta = out / "metadata.jsonl"
    return (meta.is_file() and meta.stat().st_size > 0) or any((out / "images").glob("*.png"))


def _released_any(out: Path, part_dir: Path) -> bool:
    """Whether anything was released into ``out``: an image, a record, or a record in the resume state."""
    return _holds_release(out) or bool(_read_recorded(part_dir))


def _open_append(path: Path):
    """Open a part file (private, 0600) for appending, first ending a line cut short by a crash (else the next record
    would be glued to it and lost)."""
    f = os.fdopen(_private_fd(path, os.O_RDWR | os.O_APPEND), "a+b")
    f.seek(0, os.SEEK_END)
    if f.tell() > 0:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")
    return f


def _part_records(path: Path) -> Iterator[tuple[int, bytes, dict]]:
    """Stream ``(index, line, record)`` of a part file, skipping lines cut by a crash (their rows are redone)."""
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
                index = int(rec["index"])
            except (ValueError, KeyError, TypeError):  # json.JSONDecodeError is a ValueError
                continue
            yield index, line.rstrip(b"\n"), rec


def _has_image(out: Path, rec: dict) -> bool:
    """Whether the image a record names exists (a record whose image was lost does not count)."""
    return isinstance(rec.get("file_name"), str) and (out / rec["file_name"]).is_file()


# What a published record says of each face (--faces detect): where the protected face was pasted, and the privacy
# figures of its release. Nothing computed from the original face (the detector's box and confidence, the landmarks,
# the alignment quad, an identity distance) leaves the owner's machine.
PUBLISHED_FACE_KEYS = ("paste_box", "epsilon", "delta", "noise_multiplier", "sigmas", "guarantee", "noise_source")


def published_face(face: dict) -> dict:
    """The part of a face record (`FaceRecord.to_dict`) that a release publishes (`PUBLISHED_FACE_KEYS`)."""
    return {k: face[k] for k in PUBLISHED_FACE_KEYS if k in face}


def _image_name(index: int) -> str:
    return f"images/{index:08d}.png"


def _read_recorded(part_dir: Path) -> set[int]:
    """Rows with a complete record (their image was written before the record)."""
    return {index for part in part_dir.glob("worker-*.jsonl") for index, _, _ in _part_records(part)}


def _read_listed(part_dir: Path) -> set[int]:
    """Rows already listed as unreadable (decoding is deterministic, so they stay unreadable)."""
    return {index for part in part_dir.glob("skipped-*.jsonl") for index, _, _ in _part_records(part)}


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, data, private=False)


def _atomic_write(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``path`` through a temporary file next to it and a rename (0600 in the private folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with (os.fdopen(_private_fd(tmp, os.O_WRONLY | os.O_TRUNC), "wb") if private else open(tmp, "wb")) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def protect_dataset(pipe, config: ProtectConfig, *, accelerator=None, progress: bool = True) -> Path:
    """Protect every row of ``config.source`` with ``pipe``; write the release to ``config.output_dir`` and the
    owner's bookkeeping to the private folder (`private_dir_for`); resumable.

    Returns:
        `pathlib.Path`: the output folder.

    Raises:
        ValueError: before anything is written: invalid privacy arguments, a step count the model's sampler cannot
        run, a missing split or image column, a refused or unknown column in ``keep_columns``, a private folder inside
        the output folder (or the reverse), an output folder of an earlier version or one whose private folder holds
        no state of it, or an existing output folder that released rows with other settings or another model.
        OSError: a source that cannot be found (before anything is written).
    """
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    # validate all arguments, the model's step count and the source before touching the disk
    _check_config(config)
    _check_domain(pipe, config)
    spec = pipe.privacy_spec(attributes=config.attributes, weights=config.weights, epsilon=config.epsilon,
                             delta=config.delta, scope=config.scope, stochastic_code=config.stochastic_code,
                             secure_mode=config.secure_mode)
    figures = pipe.report_for(spec).to_dict()
    num_inference_steps = resolve_num_inference_steps(config.num_inference_steps, spec.stochastic_code)
    _check_steps(pipe, num_inference_steps)
    source = _open_source(config)  # a missing source, split or image column raises here
    columns = _source_columns(source)
    keep: list[str] = []
    if config.keep_columns:
        keep = _check_keep_columns(config, source, protected=protected_column_keys(pipe, spec), figures=figures)
    out, private = Path(config.output_dir), private_dir_for(config)
    _check_folders(out, private, config.source)
    part_dir = private / ".parts"
    settings = jsonable({**{k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in asdict(config).items()
                            if k not in ("output_dir", "private_dir", "limit", "batch_size", "allow_domain_mismatch")},
                         "keep_columns": keep or None, "model": _model_name(pipe)})
    cfg_path = private / "protect_config.json"
    old = json.loads(cfg_path.read_text()) if cfg_path.exists() else None
    replaced = False
    if old is not None:
        # a folder of an earlier version (moved into its private folder) kept every column: any choice is consistent;
        # a config without the model (written before it was recorded) is taken to be this run's
        old_upgraded = {"keep_columns": settings["keep_columns"], "model": settings["model"], **old}
        if old_upgraded != settings:
            differ = sorted(k for k in {*settings, *old_upgraded} if settings.get(k) != old_upgraded.get(k))
            if _released_any(out, part_dir):
                raise ValueError(f"output_dir={str(out)!r} was written with other settings ({', '.join(differ)} "
                                 f"differ: {old}, recorded in {cfg_path}); use another output_dir or the same settings")
            replaced = True  # nothing was released under them (a run refused or stopped early): nothing to keep
            if rank == 0:
                logger.warning("%s held the settings of a run that released nothing (%s differ): replaced by this "
                               "run's", cfg_path, ", ".join(differ))
    if rank == 0:
        if not config.secure_mode:
            logger.warning("insecure_seed=%d: the privacy noise is reproducible from the seed (written to the "
                           "private %s); the output is NOT a private release", config.insecure_seed, cfg_path)
        if is_synthfaces_source(columns):
            logger.warning(SYNTHFACES_WARNING)
        _warn_if_shared(private)
    _make_private_dir(private)
    _make_private_dir(part_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if rank == 0 and (old is None or old != settings):
        if replaced:  # rows listed as skipped under the other settings (another source, another column) do not hold
            for stale in [*part_dir.glob("skipped-*.jsonl"), private / "skipped.jsonl"]:
                stale.unlink(missing_ok=True)
        _atomic_write(cfg_path, json.dumps(settings, indent=2).encode(), private=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every worker reads the state after rank 0 has settled it
    recorded = _read_recorded(part_dir)
    listed = _read_listed(part_dir)
    part = _open_append(part_dir / f"worker-{rank}.jsonl")
    skipped = _open_append(part_dir / f"skipped-{rank}.jsonl")
    bar = tqdm(desc=f"protect (worker {rank})", unit="img", disable=not progress, position=rank)
    n_skipped = 0
    resize_noted = False

    def note_resize(size):
        """Say once (per worker) that faces="aligned" shrinks or stretches each whole image to the model's square."""
        nonlocal resize_noted
        resize_noted = True
        side = pipe.image_size
        logger.warning("resizing each whole image to %dx%d px, the model's resolution (centre-cropped to a square; the "
                       "first one was %dx%d px): faces='aligned' (the default) takes every image as an aligned face "
                       "crop; to protect the faces in photos, use faces='detect' (--faces detect)", side, side, *size)

    def status(i):
        """"done" (image and record), "recover" (image without record), "lost" (record without image), "todo"."""
        has_image = (out / _image_name(i)).is_file()
        if i in recorded:
            return "done" if has_image else "lost"
        return "recover" if has_image else "todo"

    def list_skipped(entry):
        nonlocal n_skipped
        n_skipped += 1
        skipped.write((json.dumps(entry) + "\n").encode())
        skipped.flush()

    def run_block(block):
        """Protect one block of rows, each released once: an image already written is kept (its record is written
        again if a crash lost it); in the CSPRNG mode a row whose image went missing is listed, not released again.
        In the seeded mode a partly done block is recomputed whole (same batch, same bits) and only missing files
        are written."""
        lines, batch = [], []
        for i, row in block:
            if i in listed:
                continue
            state = status(i)
            extra = {k: row.get(k) for k in keep}  # only the columns the owner chose to publish
            if state == "lost" and config.secure_mode:
                list_skipped({"index": i, "reason": "released earlier (its record exists) but its image file is "
                                                    "missing; not released a second time with other noise"})
                continue
            if state == "recover":  # crashed between the image and its record: the image on disk is the release
                lines.append(json.dumps(jsonable({"index": i, "file_name": _image_name(i), **figures, **extra}))
                             + "\n")
                recorded.add(i)
            if config.secure_mode and state != "todo":
                continue
            try:
                img = _decode(row[config.image_column])
                pipe.preprocess(img)  # mode/size problems surface here, per row
            except Exception as exc:  # noqa: BLE001 - any unreadable row is skipped and listed, never a crash
                value = row.get(config.image_column)
                where = value.get("path") if isinstance(value, dict) else None
                list_skipped({"index": i, **({"path": str(where)} if where else {}),
                              "reason": f"{type(exc).__name__}: {exc}"})
                continue
            batch.append((i, img, extra, state))
            if config.faces != "detect" and not resize_noted and img.size != (pipe.image_size, pipe.image_size):
                note_resize(img.size)
        if any(state in ("todo", "lost") for *_, state in batch):
            lines.extend(release(batch))
        if lines:
            part.write("".join(lines).encode())  # records only after their images are in place
            part.flush()
            os.fsync(part.fileno())
            bar.update(len(lines))

    def generator_for(key):
        """Stochastic code of row (or face) ``key``: CSPRNG-seeded and never recorded, or seeded by (N, key)."""
        if config.secure_mode:
            import torch

            return torch.Generator().manual_seed(secrets.randbits(63))
        return _row_generator(config.insecure_seed, key)

    privacy = dict(attributes=list(spec.attributes), weights=spec.weights, epsilon=spec.epsilon, delta=spec.delta,
                   scope=spec.scope, stochastic_code=spec.stochastic_code,
                   num_inference_steps=num_inference_steps,
                   secure_mode=config.secure_mode)

    def release(batch) -> list[str]:
        """Protect ``batch``, write the images of its rows still to do (atomically) and return their records."""
        images, face_records = [img for _, img, _, _ in batch], None
        if config.faces == "detect":  # photos: each face protected and pasted back; a photo without one is skipped
            from .faces.photos import protect_photos

            rows = [i for i, *_ in batch]
            result = protect_photos(pipe, images, min_face_size=config.min_face_size,
                                    min_confidence=config.min_confidence, on_no_face="skip",
                                    face_generator=lambda k, j: generator_for(f"{rows[k]}/face{j}"), output_type="pil",
                                    **privacy)
            face_records = result.faces
            for entry in result.skipped:
                list_skipped({"index": rows[entry["index"]], "reason": entry["reason"]})
        else:
            result = pipe(images, generator=[generator_for(i) for i, *_ in batch], output_type="pil", **privacy)
        lines = []
        for k, ((i, _, extra, state), image) in enumerate(zip(batch, result.images)):
            if state not in ("todo", "lost") or image is None:  # already on disk (seeded mode), or no face found
                continue
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            _atomic_write_bytes(out / _image_name(i), buf.getvalue())
            if state == "todo":  # a "lost" row (seeded mode) has its record: the same image is written again
                record = {"index": i, "file_name": _image_name(i), **figures, **extra}
                if face_records is not None:
                    record["faces"] = [published_face(face.to_dict()) for face in face_records[k]]
                lines.append(json.dumps(jsonable(record)) + "\n")
        return lines

    # Fixed blocks: row i is the (i // world)-th row of its worker and belongs to block (i // world) // batch_size,
    # whatever was done before, so a resumed run batches every row exactly as an uninterrupted run does.
    block: list = []
    block_id = None
    for i, row in _iter_rows(config, source):
        if i % world != rank:
            continue
        bid = (i // world) // config.batch_size
        if bid != block_id:
            run_block(block)
            block, block_id = [], bid
        block.append((i, row))
    run_block(block)
    bar.close()
    part.close()
    skipped.close()
    if n_skipped:
        logger.warning("worker %d listed %d row(s) in the private %s (unreadable, without a face, or released before "
                       "and their image lost)", rank, n_skipped, private / "skipped.jsonl")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if rank == 0:
        _merge(out, private, keys={*RECORD_KEYS, *figures, *keep})
        for stale in [*out.glob(".*.tmp-*"), *(out / "images").glob(".*.tmp-*"), *private.glob(".*.tmp-*")]:
            stale.unlink(missing_ok=True)  # left by killed runs
    return out


def release_summary(config: ProtectConfig) -> dict:
    """Where a finished run's two folders are and how many rows each lists (for the CLI's last words).

    Returns:
        `dict`: ``output_dir``, ``private_dir`` (`pathlib.Path`), ``released`` (records in ``metadata.jsonl``),
        ``skipped`` (rows in the private ``skipped.jsonl``) and ``warning`` (`SYNTHFACES_WARNING` for a SynthFaces
        source, whose release protects no one; else ``None``).
    """
    def count(path: Path) -> int:
        if not path.is_file():
            return 0
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())

    out, private = Path(config.output_dir), private_dir_for(config)
    synthfaces = is_synthfaces_source(_source_columns(_open_source(config)))
    return {"output_dir": out, "private_dir": private, "released": count(out / "metadata.jsonl"),
            "skipped": count(private / "skipped.jsonl"), "warning": SYNTHFACES_WARNING if synthfaces else None}


# Rows sorted in memory at once when a part file is out of order (a resumed run that redid a row whose image was
# deleted); bounds the merge's memory whatever the dataset size.
_SORT_CHUNK = 20_000


def _sorted_runs(part: Path, tmp_dir: Path) -> list[Path]:
    """The part as runs sorted by index: itself when already sorted (the usual case, one pass to check), else
    chunks of ``_SORT_CHUNK`` records sorted in memory and written to ``tmp_dir`` (private, 0600)."""
    last = -1
    for index, _, _ in _part_records(part):
        if index < last:
            break
        last = index
    else:
        return [part]
    runs, chunk = [], []
    _make_private_dir(tmp_dir)

    def flush():
        run = tmp_dir / f"{part.stem}-run{len(runs)}.jsonl"
        chunk.sort(key=lambda item: item[0])  # stable: equal indices keep their order
        with os.fdopen(_private_fd(run, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            f.writelines(line + b"\n" for _, line in chunk)
        runs.append(run)
        chunk.clear()

    for index, line, _ in _part_records(part):
        chunk.append((index, line))
        if len(chunk) >= _SORT_CHUNK:
            flush()
    if chunk:
        flush()
    return runs


def _merge_parts(parts: list[Path], dest: Path, tmp_dir: Path, keep, *, keys=None, private: bool = False) -> int:
    """Write the records of ``parts`` kept by ``keep`` to ``dest`` (atomically), sorted by index, one per index,
    streaming: a k-way merge of sorted runs, so memory does not grow with the number of records. With ``keys``,
    each record keeps only those keys and each of its faces only `PUBLISHED_FACE_KEYS` (a record of an earlier
    version carried every input column, and the detector's figures of each face)."""
    import heapq
    import shutil

    def line_of(line: bytes, rec: dict) -> bytes:
        faces = rec.get("faces") if keys is not None else None
        wide = isinstance(faces, list) and any(not isinstance(f, dict) or f.keys() - set(PUBLISHED_FACE_KEYS)
                                               for f in faces)
        if keys is None or (rec.keys() <= keys and not wide):
            return line
        rec = {k: v for k, v in rec.items() if k in keys}
        if wide:  # a record of an earlier version carried the detector's figures of each face
            rec["faces"] = [published_face(f) for f in faces if isinstance(f, dict)]
        return json.dumps(rec).encode()

    runs = [run for part in parts for run in _sorted_runs(part, tmp_dir)]
    streams = [((index, line_of(line, rec)) for index, line, rec in _part_records(run) if keep(rec)) for run in runs]
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    written, previous = 0, None
    with (os.fdopen(_private_fd(tmp, os.O_WRONLY | os.O_TRUNC), "wb") if private else open(tmp, "wb")) as f:
        for index, line in heapq.merge(*streams, key=lambda item: item[0]):
            if index == previous:  # a row recorded twice (redone after its image was deleted): same record
                continue
            f.write(line + b"\n")
            written, previous = written + 1, index
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)
    shutil.rmtree(tmp_dir, ignore_errors=True)  # the sorted runs (also those of a merge killed earlier)
    return written


def _merge(out: Path, private: Path, *, keys=None) -> None:
    """``out/metadata.jsonl`` (each record reduced to ``keys``) and ``private/skipped.jsonl`` from the workers'
    part files in ``private/.parts`` (index order)."""
    part_dir = private / ".parts"
    tmp_dir = part_dir / "merge"
    _merge_parts(sorted(part_dir.glob("worker-*.jsonl")), out / "metadata.jsonl", tmp_dir,
                 lambda rec: _has_image(out, rec), keys=keys)
    _merge_parts(sorted(part_dir.glob("skipped-*.jsonl")), private / "skipped.jsonl", tmp_dir, lambda rec: True,
                 private=True)
