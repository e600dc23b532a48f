"""Measure the Space's face keying (`dpdiffusion.space.face_identity`): edited re-uploads and distinct faces.

    python scripts/measure_face_identity.py --skip aligned --out results/space_face_identity.json   # ~8 min
    python scripts/measure_face_identity.py --no-persons --skip aligned \
        --out results/space_face_identity_no_persons.json
    python scripts/measure_face_identity.py --skip edits synthfaces synthfaces_32px lfw same_identity \
        --out results/space_face_identity_aligned_crops.json

Every picture goes through the Space's own decoding (`images.decode_original` of a PNG data URL) and is resolved
against one fresh subject index (a temporary folder, a fixed secret), as the Space resolves uploads:

- **edit survival**: 8 faces (scikit-image's astronaut and camera, SynthFaces 0-2 at the Space's 128 px, LFW subset
  faces 0-2 upscaled to 256 px) are released once each; then every edit of `EDITS` (mirror, grayscale, brightness and
  contrast +-10 %, an 8 px border in three colours, four 10 % crops, +-3 degree turns) is resolved: does it find the
  original's subject?
- **false merges**: 200 SynthFaces of 200 distinct identities (at 128 px, and at the model's 32 px upscaled to
  256 px), the LFW subset's 100 faces and 100 non-faces (25 px
  grey crops, upscaled to 256 px bicubic) and 12 SynthFaces pairs of one identity in two renders, each resolved in
  turn against everything before it: how many are taken for an earlier subject, and by which kind of match.

- **aligned crops** (``--skip`` all but ``aligned``): both figures on the 32 px FFHQ-aligned crops of the faces the
  photo mode's detector finds (astronaut, LFW faces), the person described in the photo.

The LFW subset carries no identity labels and holds several photos of some people (its closest pairs look like one
person), so a merge there is not necessarily false; its faces are 25 px, so dlib sees them blurred (their descriptors
lie closer together than those of real photos), a pessimistic case for persons.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import tempfile
import time
from collections import Counter

import numpy as np
import PIL.Image
import PIL.ImageEnhance
import PIL.ImageOps

SECRET = bytes(range(32))


def _pil(x):
    return PIL.Image.fromarray(x)


def _np(p):
    return np.asarray(p.convert("RGB"), dtype=np.uint8)


def _crop(x, top, bottom, left, right):
    h, w = x.shape[:2]
    return x[round(top * h):h - round(bottom * h), round(left * w):w - round(right * w)]


EDITS = {
    "mirror": lambda x: x[:, ::-1].copy(),
    "grayscale": lambda x: _np(_pil(x).convert("L")),
    "brightness +10%": lambda x: _np(PIL.ImageEnhance.Brightness(_pil(x)).enhance(1.1)),
    "brightness -10%": lambda x: _np(PIL.ImageEnhance.Brightness(_pil(x)).enhance(0.9)),
    "contrast +10%": lambda x: _np(PIL.ImageEnhance.Contrast(_pil(x)).enhance(1.1)),
    "contrast -10%": lambda x: _np(PIL.ImageEnhance.Contrast(_pil(x)).enhance(0.9)),
    "border 8 px black": lambda x: _np(PIL.ImageOps.expand(_pil(x), 8, fill=(0, 0, 0))),
    "border 8 px white": lambda x: _np(PIL.ImageOps.expand(_pil(x), 8, fill=(255, 255, 255))),
    "border 8 px red": lambda x: _np(PIL.ImageOps.expand(_pil(x), 8, fill=(220, 30, 40))),
    "crop 10% centred": lambda x: _crop(x, 0.05, 0.05, 0.05, 0.05),
    "crop 10% top-left": lambda x: _crop(x, 0.1, 0.0, 0.1, 0.0),
    "crop 10% left": lambda x: _crop(x, 0.0, 0.0, 0.1, 0.0),
    "crop 10% bottom": lambda x: _crop(x, 0.0, 0.1, 0.0, 0.0),
    "rotate +3 deg": lambda x: _np(_pil(x).rotate(3, resample=PIL.Image.BICUBIC)),
    "rotate -3 deg": lambda x: _np(_pil(x).rotate(-3, resample=PIL.Image.BICUBIC)),
}


def upload(image: np.ndarray) -> np.ndarray:
    """What the Space decodes when ``image`` is uploaded as a PNG."""
    from dpdiffusion.space.images import decode_original

    buf = io.BytesIO()
    PIL.Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return decode_original("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())


def lfw(side: int = 256):
    from skimage import data

    faces = (data.lfw_subset() * 255).round().astype(np.uint8)  # (200, 25, 25): 100 faces, then 100 non-faces
    return [_np(_pil(g).resize((side, side), PIL.Image.BICUBIC)) for g in faces]


def synthfaces(n: int, *, seed: int = 2024, identities=None, size: int = 128):
    from dpdiffusion.data.synthfaces import make_synthfaces_arrays

    images, params = make_synthfaces_arrays(n, image_size=size, seed=seed, num_identities=identities or n)
    return list(images), params["identity"]


def new_keyer(folder, persons: bool):
    from dpdiffusion.space.face_identity import FaceIdentityKeyer, SubjectIndex

    return FaceIdentityKeyer(SECRET, SubjectIndex(f"{folder}/subject_index.sqlite", SECRET), persons=persons,
                             legacy=False)


def edit_survival(persons: bool) -> dict:
    from skimage import data

    faces = {"astronaut": data.astronaut(), "camera": np.stack([data.camera()] * 3, axis=-1)}
    synth, _ = synthfaces(3)
    faces.update({f"synthfaces {i}": f for i, f in enumerate(synth)})
    faces.update({f"lfw {i}": f for i, f in enumerate(lfw()[:3])})
    per_edit = {e: {"kept": 0, "fresh": [], "by": Counter()} for e in EDITS}
    with tempfile.TemporaryDirectory() as folder:
        keyer = new_keyer(folder, persons)
        known = set()
        originals = {}
        for name, image in faces.items():
            originals[name] = keyer.resolve(upload(image), known)
            known.add(originals[name])
        for name, image in faces.items():
            for edit, fn in EDITS.items():
                m = keyer.match(upload(fn(image)), known, register=False)
                row = per_edit[edit]
                row["by"][m.by] += 1
                if m.subject_id == originals[name]:
                    row["kept"] += 1
                else:
                    row["fresh"].append(name)
    total = sum(r["kept"] for r in per_edit.values())
    return {"faces": list(faces), "edits": {e: {"kept": r["kept"], "of": len(faces), "fresh": r["fresh"],
                                                "by": dict(r["by"])} for e, r in per_edit.items()},
            "kept": total, "of": len(faces) * len(EDITS)}


def merges(images, names, persons: bool) -> dict:
    """Resolve ``images`` in turn against one index; report each one taken for an earlier subject."""
    out = []
    with tempfile.TemporaryDirectory() as folder:
        keyer = new_keyer(folder, persons)
        owner, known = {}, set()
        for name, image in zip(names, images):
            m = keyer.match(upload(image), known)
            if m.subject_id in known:
                out.append({"face": name, "taken_for": owner[m.subject_id], "by": m.by, "votes": m.votes})
            else:
                owner[m.subject_id] = name
                known.add(m.subject_id)
    return {"faces": len(images), "subjects": len(known), "merged": out}


def aligned_crops(persons: bool, side: int = 32) -> dict:
    """The same two figures on FFHQ-aligned ``side`` px crops of the faces found (the photo mode's detector and
    thresholds), keyed by picture (and, with ``persons``, by the person in the photo): how issue 31 keys a face."""
    from skimage import data

    from dpdiffusion.faces.align import align_face
    from dpdiffusion.faces.photos import find_faces

    def crops(photo):
        photo = upload(photo)
        return [(photo, f, align_face(photo, f.landmarks, side).crop) for f in find_faces(photo)]

    faces = {"astronaut": data.astronaut(), **{f"lfw {i}": f for i, f in enumerate(lfw()[:100])}}
    found = {name: crops(image) for name, image in faces.items()}
    found = {name: c[0] for name, c in found.items() if c}
    survival = {e: {"kept": 0, "of": 0, "lost_face": 0} for e in EDITS}
    merged = []
    with tempfile.TemporaryDirectory() as folder:
        keyer = new_keyer(folder, persons)
        owner, known = {}, set()
        for name, (photo, face, crop) in found.items():
            m = keyer.match(crop, known, photo=photo, face=face)
            if m.subject_id in known:
                merged.append({"face": name, "taken_for": owner[m.subject_id], "by": m.by, "votes": m.votes})
            else:
                owner[m.subject_id] = name
                known.add(m.subject_id)
        sid = {name: sid for sid, name in owner.items()}
        for name in ["astronaut", "lfw 0", "lfw 1", "lfw 2", "lfw 3", "lfw 5", "lfw 6", "lfw 7"]:
            if name not in sid:
                continue
            for edit, fn in EDITS.items():
                row = survival[edit]
                row["of"] += 1
                again = crops(fn(faces[name]))
                if not again:
                    row["lost_face"] += 1
                    continue
                photo, face, crop = again[0]
                row["kept"] += keyer.match(crop, known, photo=photo, face=face, register=False).subject_id == sid[name]
    return {"faces_found": len(found), "of": len(faces), "subjects": len(known), "merged": merged,
            "edits": survival}


def synthfaces_centroids(n: int = 300, seed: int = 0) -> np.ndarray:
    """(2, 128): the means of dlib's descriptors of the SynthFaces it finds, rendered at 128 px and at 32 px upscaled
    to 256 px (``face_identity._CARTOON_CENTROIDS``)."""
    from dpdiffusion.space.face_identity import person_descriptor

    sharp, _ = synthfaces(n, seed=seed, size=128)
    small, _ = synthfaces(n, seed=seed, size=32)
    blurred = [_np(_pil(x).resize((256, 256), PIL.Image.BICUBIC)) for x in small]
    means = []
    for images in (sharp, blurred):
        found = [d for d in (person_descriptor(upload(f)) for f in images) if d is not None]
        means.append(np.mean(found, axis=0))
    return np.stack(means)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the figures to this JSON file")
    parser.add_argument("--no-persons", action="store_true", help="picture keys only (as without the faces extra)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["edits", "synthfaces", "synthfaces_32px", "lfw", "same_identity", "aligned"],
                        help="parts to leave out")
    parser.add_argument("--centroids", action="store_true",
                        help="print the SynthFaces descriptor centroids (face_identity._CARTOON_CENTROIDS) and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.centroids:
        print(base64.b64encode(synthfaces_centroids().astype("<f2").tobytes()).decode())
        return
    persons = not args.no_persons
    result = {"persons": persons}
    start = time.perf_counter()
    if "edits" not in args.skip:
        result["edit_survival"] = edit_survival(persons)
        print("edit survival:", result["edit_survival"]["kept"], "of", result["edit_survival"]["of"], flush=True)
        for e, r in result["edit_survival"]["edits"].items():
            print(f"  {e:20s} {r['kept']}/{r['of']}  fresh: {r['fresh']}  by: {r['by']}", flush=True)
    if "synthfaces" not in args.skip:
        synth, _ = synthfaces(200)
        result["synthfaces_200"] = merges(synth, [f"synthfaces {i}" for i in range(200)], persons)
        print("200 SynthFaces:", result["synthfaces_200"]["subjects"], "subjects;", result["synthfaces_200"]["merged"],
              flush=True)
    if "synthfaces_32px" not in args.skip:  # the model's own 32 px renders, upscaled bicubic before the upload
        small, _ = synthfaces(200, seed=5, size=32)
        big = [_np(_pil(x).resize((256, 256), PIL.Image.BICUBIC)) for x in small]
        result["synthfaces_32px_upscaled_200"] = merges(big, [f"synthfaces 32 px {i}" for i in range(200)], persons)
        r = result["synthfaces_32px_upscaled_200"]
        print("200 SynthFaces at 32 px upscaled:", r["subjects"], "subjects;",
              [(m["face"], m["taken_for"], m["by"]) for m in r["merged"]], flush=True)
    if "lfw" not in args.skip:
        faces = lfw()
        result["lfw_faces_100"] = merges(faces[:100], [f"lfw {i}" for i in range(100)], persons)
        print("LFW faces:", result["lfw_faces_100"]["subjects"], "subjects;",
              [(m["face"], m["taken_for"], m["by"]) for m in result["lfw_faces_100"]["merged"]], flush=True)
        result["lfw_nonfaces_100"] = merges(faces[100:], [f"lfw {i}" for i in range(100, 200)], persons)
        print("LFW non-faces:", result["lfw_nonfaces_100"]["subjects"], "subjects;",
              result["lfw_nonfaces_100"]["merged"], flush=True)
    if "same_identity" not in args.skip:
        images, identity = synthfaces(24, identities=12, seed=7)
        order = np.argsort(identity, kind="stable")
        pairs = merges([images[i] for i in order], [f"identity {identity[i]} image {i}" for i in order], persons)
        result["synthfaces_same_identity_12_pairs"] = pairs
        print("SynthFaces, 12 identities x 2 renders:", pairs["subjects"], "subjects", flush=True)
    if "aligned" not in args.skip:
        r = result["aligned_32px"] = aligned_crops(persons)
        print(f"aligned 32 px crops: {r['faces_found']} of {r['of']} faces found, {r['subjects']} subjects; merged",
              [(m["face"], m["taken_for"], m["by"]) for m in r["merged"]], flush=True)
        for e, row in r["edits"].items():
            print(f"  {e:20s} {row['kept']}/{row['of']} (face not found again: {row['lost_face']})", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)


if __name__ == "__main__":
    main()
