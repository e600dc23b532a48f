"""Add the raw attribute directions and the public fit-set coordinates to attribute directions saved without them.

`AttributeDirections` saved before raw directions were stored hold only the stored-order orthonormal basis
(``directions``: the QR of the raw directions in the stored order), so every protected set is noised in that basis
and an attribute stored after others only in its part orthogonal to them. `AttributeDirections.fit` now stores the
raw directions and the fit set's raw coordinates, from which the basis, clip bounds and prior of any protected set
follow. This script adds both to a model fitted before, from the *same fit set* (SynthFaces with the training seed
and size), without changing anything stored (``directions``, ``center``, ``clip_bound_values``, the prior):

1. re-encode the fit set and check that the stored clip bounds are the configured quantile of its stored-order
   coordinates (so the data really is the fit set; as ``scripts/fit_coordinate_prior.py``);
2. fit the raw directions again (the model's ``method``: class-mean differences or the logistic probe) and keep the
   part of each that lies in the stored span it was orthonormalised in: ``U = Q triu(Q^T U_refit)``, columns
   normalised. Fitted raw directions lie in that span exactly (``u_i`` is in ``span(q_1 .. q_i)``), so this only
   removes the re-encoding's rounding and makes the QR of ``U`` in the stored order reproduce ``directions``;
3. store ``U`` and the fit set's raw coordinates ``(z - c) U`` (all rows), with ``fit_sample_size`` in the config.

Prints a summary (bounds agreement, how far the refit directions were from the stored spans). Deterministic: the
same fit set gives the same files.

    python scripts/add_raw_directions.py --model default --num-images 10000 --seed 0
    python scripts/add_raw_directions.py --model unet2d --num-images 10000 --seed 0
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import torch


def raw_directions_in_stored_spans(q: torch.Tensor, refit: torch.Tensor) -> torch.Tensor:
    """``U = Q triu(Q^T refit)`` with unit columns: each refit direction restricted to the span of the stored
    directions up to its own position (``(d, K)`` float64). Raises ``ValueError`` if a refit direction has no
    positive part along its own stored direction (the data is not the fit set)."""
    r = torch.triu(q.T @ refit)  # (K, K)
    if not bool((torch.diagonal(r) > 0).all()):
        raise ValueError("a refitted direction points away from its stored direction: the data is not the fit set")
    u = q @ r
    return u / u.norm(dim=0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="Pipeline folder, or default / unet2d for an embedded model "
                                                             "(default: the embedded default).")
    parser.add_argument("--num-images", type=int, default=10000, help="Size of the SynthFaces fit set.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the SynthFaces fit set.")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="Largest relative difference between the stored bounds and the refitted quantile.")
    args = parser.parse_args(argv)
    if args.num_images < 100:
        parser.error(f"--num-images must be >= 100, got {args.num_images}")

    from dpdiffusion.data.synthfaces import SYNTHFACES_ATTRIBUTES, make_synthfaces_arrays
    from dpdiffusion.models.attribute_directions import AttributeDirections, raw_directions_from_labels
    from dpdiffusion.models.default import EMBEDDED_MODELS, embedded_model_name, load_pipeline
    from dpdiffusion.training.train_autoencoder import encode_all

    torch.set_num_threads(min(2, torch.get_num_threads()))
    name = embedded_model_name(args.model)
    folder = pathlib.Path(EMBEDDED_MODELS[name][0] if name is not None else args.model)
    pipe = load_pipeline(str(folder))
    dirs = pipe.attribute_directions
    if dirs.has_raw_directions:
        sys.exit(f"{folder} already stores raw directions (fit_sample_size={dirs.config.fit_sample_size})")
    if dirs.config.method not in ("mean_difference", "logistic"):
        sys.exit(f"directions fitted by method={dirs.config.method!r} are not fitted on SynthFaces labels; convert "
                 "the official checkpoint again (scripts/convert_diffae_checkpoint.py) or fit them again")
    unknown = [n for n in dirs.names if n not in SYNTHFACES_ATTRIBUTES]
    if unknown:
        sys.exit(f"attributes {unknown} are not SynthFaces attributes: fit these directions again on their data")
    images, params = make_synthfaces_arrays(args.num_images, image_size=pipe.image_size, seed=args.seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
    labels = torch.stack([torch.as_tensor(params[n], dtype=torch.float64) for n in dirs.names], 1)  # (N, K)
    z = encode_all(pipe.encoder, x).double()  # (N, d)
    q, center = dirs.directions.double(), dirs.center.double()
    a = (z - center) @ q  # (N, K), stored order
    stored = dirs.clip_bound_values.double()
    rel = float(((torch.quantile(a.abs(), dirs.config.clip_quantile, dim=0) - stored).abs() / stored).max())
    if rel > args.tolerance:
        sys.exit(f"the data is not the fit set of these directions: the {dirs.config.clip_quantile} quantile of "
                 f"|a| differs from the stored clip bounds by {rel:.3g} (relative) > --tolerance {args.tolerance}")
    refit = raw_directions_from_labels(z, labels, dirs.names, method=dirs.config.method)  # (d, K), unit
    try:
        raw = raw_directions_in_stored_spans(q, refit)
    except ValueError as err:
        sys.exit(str(err))
    q_again = torch.linalg.qr(raw)[0]
    q_again = q_again * torch.sign(torch.diagonal(q_again.T @ q))  # same signs as the stored basis
    config = {k: v for k, v in dirs.config.items() if not k.startswith("_")}
    new = AttributeDirections(**{**config, "fit_sample_size": int(z.shape[0])})
    missing, unexpected = new.load_state_dict(dirs.state_dict(), strict=False)
    assert sorted(missing) == ["fit_raw_coordinates", "raw_directions"] and not unexpected, (missing, unexpected)
    new.raw_directions.copy_(raw.float())
    new.fit_raw_coordinates.copy_(((z - center) @ raw).float())
    target = folder / "attribute_directions"
    tmp = folder / ".attribute_directions.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    new.save_pretrained(tmp, safe_serialization=True)
    for f in tmp.iterdir():
        f.chmod(0o644)  # package data: readable by everyone, as the files it replaces
    old = folder / ".attribute_directions.old"
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old)
    summary = {"model": str(folder), "num_images": args.num_images, "seed": args.seed,
               "bounds_max_relative_difference": rel,
               "refit_distance_to_stored_span": {n: float((refit[:, i] - raw[:, i]).norm())
                                                 for i, n in enumerate(dirs.names)},
               "stored_order_qr_max_difference": float((q_again - q).abs().max()),
               "fit_sample_size": int(z.shape[0])}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
