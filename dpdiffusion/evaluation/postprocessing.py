"""What the post-processing of the released coordinates does to a release: ``"clip"`` against ``"posterior_mean"``.

Both read public values only (the bounds ``C_i``, the calibrated ``sigma_i`` and, for the posterior mean, the public
fit-time prior of the coordinates), so the guarantee is the same; what differs is the latent the decoder sees and so
utility and leakage. For held-out SynthFaces, at each epsilon and for each post-processing:

* coordinates: the share of released protected coordinates on a bound (``|a~_i| >= C_i``, up to 1e-3) and the mean
  squared error of the released coordinate against the input's clipped one, over ``C_i^2``;
* utility: agreement of an independent attribute classifier (the judge of ``evaluate autoencoder``) between the
  original and the release on every *unprotected* attribute (min and mean over them);
* leakage: the better of (a) the judge's accuracy on the protected attributes of the releases against the truth
  (a fixed attacker trained on clean faces) and (b) a logistic probe on the re-encoded releases, fitted on one half and
  tested on the other (an attacker that knows the method), with the DP bound ``(e^eps + delta) / (1 + e^eps)``
  (``dp_accuracy_bound`` at the attribute's prior) for comparison.

Every setting decodes the same images from the same random stochastic codes; the privacy noise comes from the OS
CSPRNG, as in a default release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..data.synthfaces import SYNTHFACES_ATTRIBUTES, make_synthfaces_arrays
from .leakage import dp_accuracy_bound, latent_probe_leakage

POST_PROCESSINGS = ("clip", "posterior_mean")


def _check(num_images: int, epsilons: Sequence[float], attributes: Sequence[str], post_processings) -> None:
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 8:
        raise ValueError(f"num_images must be an integer >= 8, got num_images={num_images!r}")
    if not epsilons or any(not (isinstance(e, (int, float)) and e > 0 and not math.isinf(e)) for e in epsilons):
        raise ValueError(f"epsilons must be finite numbers > 0, got epsilons={list(epsilons)}")
    unknown = [a for a in attributes if a not in SYNTHFACES_ATTRIBUTES]
    if not attributes or unknown:
        raise ValueError(f"attributes must be SynthFaces attributes {list(SYNTHFACES_ATTRIBUTES)}, got {list(attributes)}")
    bad = [p for p in post_processings if p not in POST_PROCESSINGS]
    if not post_processings or bad:
        raise ValueError(f"post_processings must be among {list(POST_PROCESSINGS)}, got {list(post_processings)}")


@torch.no_grad()
def postprocessing_effect(pipe, judge, *, epsilons: Sequence[float] = (0.5, 1.0, 4.0, 8.0),
                          attributes: Sequence[str] = ("dark_skin", "long_hair"), num_images: int = 256,
                          seed: int = 99, delta: float = 1e-5, num_inference_steps: int = 10,
                          post_processings: Sequence[str] = POST_PROCESSINGS, batch_size: int = 128) -> list[dict]:
    """The figures above, one row per (epsilon, post-processing).

    Args:
        pipe (`DPDiffusionPipeline`): the model (its directions must hold the coordinate prior for
            ``"posterior_mean"``).
        judge: a multi-label classifier over SynthFaces' five attributes (``load_or_train_judge``).

    Raises:
        ValueError: for a bad argument (named, with its range).
    """
    from .utility import predict_labels

    _check(num_images, epsilons, attributes, post_processings)
    names = list(attributes)
    images, params = make_synthfaces_arrays(num_images, image_size=pipe.image_size, seed=seed)
    truth = torch.stack([torch.as_tensor(params[a], dtype=torch.float32) for a in SYNTHFACES_ATTRIBUTES], 1) > 0.5
    x01 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (N, 3, H, W) in [0, 1]
    z = pipe.encode(x01)  # (N, d)
    codes = torch.randn(x01.shape, generator=torch.Generator().manual_seed(seed))  # same x_T in every setting
    dirs = pipe.attribute_directions
    bounds = dirs.clip_bound_tensor(names)  # (k,)
    a_true = dirs.project(z, attributes=names)[0].clamp(-bounds, bounds)  # (N, k)
    pred_orig = predict_labels(judge, x01).bool()
    kept = [j for j, a in enumerate(SYNTHFACES_ATTRIBUTES) if a not in names]
    prot = [SYNTHFACES_ATTRIBUTES.index(a) for a in names]
    half = num_images // 2
    rows = []
    for eps in epsilons:
        for post in post_processings:
            released, report = pipe.apply_privacy_noise(z, attributes=names, epsilon=float(eps), delta=delta,
                                                        post_processing=post)
            a = dirs.project(released, attributes=names)[0]
            out = torch.cat([pipe.decode(released[i:i + batch_size], stochastic_code=codes[i:i + batch_size],
                                         num_inference_steps=num_inference_steps, output_type="pt", progress=False)
                             .float().cpu() for i in range(0, num_images, batch_size)])  # (N, 3, H, W) in [0, 1]
            pred = predict_labels(judge, out).bool()
            agree = (pred == pred_orig).double().mean(0)
            z_out = pipe.encode(out)
            probe = latent_probe_leakage(z_out[:half], truth[:half][:, prot], z_out[half:], truth[half:][:, prot],
                                         names=names, epsilon=float(eps), delta=delta)
            leakage = {}
            for k, (j, n) in enumerate(zip(prot, names)):
                judge_acc = float((pred[:, j] == truth[:, j]).double().mean())
                probe_acc = probe[n]["accuracy"] if n in probe else 0.5
                prior = float(truth[:, j].double().mean())
                leakage[n] = {"judge": judge_acc, "probe": probe_acc, "best": max(judge_acc, probe_acc),
                              "bound": dp_accuracy_bound(float(eps), delta=delta, prior=prior)}
            rows.append({
                "epsilon": float(eps), "post_processing": post, "delta": delta,
                "num_inference_steps": num_inference_steps, "num_images": num_images,
                "sigmas": dict(report.sigmas),
                "share_at_a_bound": float((a.abs() >= bounds * (1 - 1e-3)).double().mean()),
                "mse_over_c2": float(((a - a_true) ** 2 / bounds ** 2).mean()),
                "utility_agreement": {SYNTHFACES_ATTRIBUTES[j]: float(agree[j]) for j in kept},
                "utility_agreement_min": float(agree[kept].min()) if kept else None,
                "utility_agreement_mean": float(agree[kept].mean()) if kept else None,
                "leakage": leakage,
                "leakage_best": max(v["best"] for v in leakage.values()),
                "leakage_within_bound": all(v["best"] <= v["bound"] for v in leakage.values()),
            })
    return rows
