"""Audits of ``DPDiffusionPipeline``: neighbours in the semantic latent, the likelihood-ratio statistic, and the
latent and decoded releases run many times.

Noise: these audits call ``apply_privacy_noise`` with ``secure_mode=False`` by default, so that an audit is
reproducible from its ``seed`` (the seeded noise has the same distribution as the OS CSPRNG's); pass
``secure_mode=True`` to audit the secure sampler itself (then ``seed`` fixes only the decoder's stochastic code).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .threshold import AuditResult, threshold_audit

__all__ = ["formal_neighbours", "linear_statistic", "audit_latent_release", "audit_decoded_release"]


def formal_neighbours(pipe, z: torch.Tensor, *, attributes: Sequence[str], target: str | torch.Tensor = "worst_case"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two attribute-neighbours in the semantic latent: the same residual, different protected coordinates.

    Args:
        pipe: a ``DPDiffusionPipeline``.
        z (`torch.Tensor`): ``(d,)`` or ``(1, d)`` latent whose residual both neighbours share.
        attributes (`Sequence[str]`): the protected attributes.
        target: ``"worst_case"`` (coordinates at ``-C`` and ``+C``: the largest move the clip bounds allow) or a
            tensor ``(k,)`` of protected coordinates for the second neighbour (the first keeps ``z``'s own), e.g.
            the coordinates of the counterfactual image's latent.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: ``z_0, z_1`` of shape ``(1, d)`` each.
    """
    dirs = pipe.attribute_directions
    z = z.reshape(1, -1)
    a, r = dirs.project(z, attributes=list(attributes))
    if isinstance(target, str):
        if target != "worst_case":
            raise ValueError(f"target must be 'worst_case' or a tensor of coordinates, got target={target!r}")
        bounds = dirs.clip_bound_tensor(list(attributes)).to(z)
        a0, a1 = -bounds.reshape(1, -1), bounds.reshape(1, -1)
    else:
        a0, a1 = a, torch.as_tensor(target).to(z).reshape(1, -1)
    return dirs.compose(a0, r, attributes=list(attributes)), dirs.compose(a1, r, attributes=list(attributes))


def _noise_precision(pipe, report, attributes) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> Sigma^+ v for the release's noise covariance (public: directions and sigmas from the report)."""
    basis = pipe.attribute_directions.basis(list(attributes)).double()  # (d, k)
    inv_var = torch.tensor([1.0 / report.sigmas[a] ** 2 for a in attributes], dtype=torch.float64)
    inv_res = 0.0 if not report.residual_sigma else 1.0 / report.residual_sigma**2

    def apply(v: torch.Tensor) -> torch.Tensor:
        v = v.double().reshape(-1)
        coords = basis.T @ v
        return basis @ (inv_var * coords) + inv_res * (v - basis @ coords)

    return apply


def _precision_for(statistic: str, pipe, report, attributes) -> Callable | None:
    if statistic == "likelihood_ratio":
        return _noise_precision(pipe, report, attributes)
    if statistic == "residual":
        basis = pipe.attribute_directions.basis(list(attributes)).double()  # (d, k)
        return lambda v: v.double().reshape(-1) - basis @ (basis.T @ v.double().reshape(-1))
    if statistic == "projection":
        return None
    raise ValueError(f"statistic must be 'likelihood_ratio', 'residual' or 'projection', got statistic={statistic!r}")


def linear_statistic(mean_0: torch.Tensor, mean_1: torch.Tensor, *, precision: Callable | None = None
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The linear test statistic ``s(y) = (y - (m0 + m1) / 2) . W (m1 - m0)``.

    With ``precision`` = the inverse noise covariance ``W`` this is the log likelihood ratio of two Gaussians with
    that covariance (the Neyman-Pearson optimal test); without it, the projection on the mean difference.
    """
    m0, m1 = mean_0.double().reshape(-1), mean_1.double().reshape(-1)
    diff = m1 - m0
    w = precision(diff) if precision is not None else diff
    mid = (m0 + m1) / 2

    def statistic(y: torch.Tensor) -> torch.Tensor:
        return (y.double().reshape(len(y), -1) - mid) @ w

    return statistic


def _release_latents(pipe, z: torch.Tensor, n: int, *, attributes, epsilon, delta, scope, generator,
                     post_processing: str = "none", secure_mode: bool = False, batch_size: int = 8192
                     ) -> tuple[torch.Tensor, Any]:
    outs, report = [], None
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        zt, report = pipe.apply_privacy_noise(z.reshape(1, -1).expand(m, -1).clone(), attributes=list(attributes),
                                              epsilon=epsilon, delta=delta, scope=scope, generator=generator,
                                              post_processing=post_processing, secure_mode=secure_mode)
        outs.append(zt)
    return torch.cat(outs), report


@torch.no_grad()
def audit_latent_release(pipe, z_0: torch.Tensor, z_1: torch.Tensor, *, attributes: Sequence[str], epsilon: float,
                         delta: float = 1e-5, scope: str = "attributes", num_trials: int = 20000,
                         statistic: str = "likelihood_ratio", post_processing: str = "none", alpha: float = 0.05,
                         seed: int = 0, secure_mode: bool = False) -> AuditResult:
    """Audit ``apply_privacy_noise`` on the pair of latents ``(z_0, z_1)`` (the released latent ``z~`` is observed).

    The attack's means are estimated on ``num_trials // 4`` extra trials per world; the scores of ``num_trials``
    fresh trials per world go to `threshold_audit`.

    Args:
        statistic (`str`): ``"likelihood_ratio"`` (whitened by the release's public noise covariance: the optimal
            test when the pair differs only where noise is added), ``"residual"`` (projection of the output on the
            part of the mean difference outside the protected span: a deterministic shift of the residual, which
            ``scope="attributes"`` does not noise and the guarantee does not cover for image pairs) or
            ``"projection"`` (on the raw mean difference).
        post_processing (`str`): passed to ``apply_privacy_noise``. ``"none"`` (default) audits the mechanism's raw
            Gaussian output, of which the released ``"clip"`` output is post-processing. With ``"clip"`` the clamp
            puts point masses at ``+-C_i``; the residual, recomputed from each neighbour's latent in floating
            point, then differs by rounding (about 1e-7) between the two worlds, and an exact-float threshold can
            tell the point masses apart: a floating-point side channel of publishing the latent at full precision
            (the class of Mironov 2012), outside the model of the guarantee, which the experiments report
            separately. The decoded, 8-bit image release is audited by `audit_decoded_release`.
        secure_mode (`bool`): passed to ``apply_privacy_noise`` (default ``False``: reproducible from ``seed``).

    The result's ``max_certifiable_epsilon`` (`max_certifiable_epsilon` of ``num_trials``) says which claims the
    audit can refute; 20,000 trials per world certify at most 7.9 (refuting claims up to 3.9).
    """
    g = torch.Generator().manual_seed(seed)
    kw = dict(attributes=attributes, epsilon=epsilon, delta=delta, scope=scope, generator=g,
              post_processing=post_processing, secure_mode=secure_mode)
    fit = max(64, num_trials // 4)
    y0, report = _release_latents(pipe, z_0, fit, **kw)
    y1, _ = _release_latents(pipe, z_1, fit, **kw)
    stat = linear_statistic(y0.mean(0), y1.mean(0), precision=_precision_for(statistic, pipe, report, attributes))
    s0 = stat(_release_latents(pipe, z_0, num_trials, **kw)[0])
    s1 = stat(_release_latents(pipe, z_1, num_trials, **kw)[0])
    return threshold_audit(s0.numpy(), s1.numpy(), delta=delta, alpha=alpha, seed=seed,
                           claimed_epsilon=report.epsilon)


@torch.no_grad()
def audit_decoded_release(pipe, z_0: torch.Tensor, z_1: torch.Tensor, *, attributes: Sequence[str], epsilon: float,
                          delta: float = 1e-5, scope: str = "attributes", num_trials: int = 200,
                          num_inference_steps: int = 10, batch_size: int = 100, statistic: str = "likelihood_ratio",
                          alpha: float = 0.05, seed: int = 0, progress: bool = False, secure_mode: bool = False
                          ) -> AuditResult:
    """Audit the whole release, images included: ``z~ -> decode (random x_T) -> re-encode -> statistic``.

    The attack is the latent attack of `audit_latent_release` (means estimated in the latent without decoding)
    applied to the re-encoded released image. By post-processing the bound can only be lower than the latent one;
    it checks that decoding adds no path around the mechanism for attribute-neighbours. Decoding is the expensive
    part: 100 trials per world (50 evaluation trials) certify at most 2.57, so they can refute claims up to 1.28
    only (`largest_refutable_claim`); ``secure_mode`` as in `audit_latent_release`.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    kw = dict(attributes=attributes, epsilon=epsilon, delta=delta, scope=scope, generator=g, secure_mode=secure_mode)
    fit = 4096
    y0, report = _release_latents(pipe, z_0, fit, **kw)
    y1, _ = _release_latents(pipe, z_1, fit, **kw)
    stat = linear_statistic(y0.mean(0), y1.mean(0), precision=_precision_for(statistic, pipe, report, attributes))
    scores = []
    bar = tqdm(total=2 * num_trials, desc=f"audit (decoded) eps={epsilon:g}", disable=not progress, leave=False)
    for z in (z_0, z_1):
        out = []
        for start in range(0, num_trials, batch_size):
            m = min(batch_size, num_trials - start)
            zt, _ = pipe.apply_privacy_noise(z.reshape(1, -1).expand(m, -1).clone(), generator=g,
                                             attributes=list(attributes), epsilon=epsilon, delta=delta, scope=scope,
                                             secure_mode=secure_mode)
            x_t = torch.randn((m, 3, pipe.image_size, pipe.image_size), generator=g).to(pipe.device, pipe.unet.dtype)
            img = pipe.decode(zt, stochastic_code=x_t, num_inference_steps=num_inference_steps, output_type="pt",
                              progress=False)
            img = torch.round(img * 255) / 255  # the released 8-bit image
            out.append(stat(pipe.encode_tensor(img * 2 - 1).cpu()))
            bar.update(m)
        scores.append(torch.cat(out).numpy())
    bar.close()
    return threshold_audit(scores[0], scores[1], delta=delta, alpha=alpha, seed=seed, claimed_epsilon=report.epsilon)
