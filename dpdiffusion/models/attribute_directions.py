"""Attribute directions in the semantic latent space and the public clip bounds.

For each attribute name the model stores a unit direction ``A[:, i]`` in z-space. The directions are fitted once, on
labelled latents of a *training* set, and orthonormalised (QR, in the stored order), so that for any subset ``S``
of names the columns ``A_S`` are orthonormal and

    a = A_S^T (z - c)            # (B, k) protected coordinates, centred at the public centre c
    r = z - A_S a                # (B, d) residual: identity, pose, expression, ...
    z = A_S a + r                # ``compose``: the exact inverse of ``project``

Direction fitting (``method="mean_difference"``, the default) uses the difference of the class-conditional means of
z. Removing the span of those directions equalises the class-conditional means of the residual, which is exactly
the condition for the residual to be *linearly guarded*: no linear classifier on r beats the constant predictor
(LEACE, Belrose et al., NeurIPS 2023, Theorem 3.1). ``method="logistic"`` uses a logistic-regression probe instead.
Non-linear read-outs of the attribute from r are *not* excluded; the evaluation measures them.

The clip bound ``C_i`` of each coordinate is a fixed quantile of ``|a_i|`` over the training latents, chosen at fit
time and public from then on; it is never recomputed from an image being protected. These bounds define the
sensitivity ``Delta_i = 2 C_i`` of the privacy mechanism (``dpdiffusion.privacy.mechanism``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class AttributeDirections(ModelMixin, ConfigMixin):
    r"""Orthonormal attribute directions ``A`` (d x K), a public centre ``c`` and public clip bounds ``C``.

    Args:
        attribute_names (`list[str]`): the attribute names, in the order of the QR orthonormalisation.
        latent_dim (`int`): dimension ``d`` of the semantic latent.
        clip_quantile (`float`, defaults to 0.95): quantile of ``|a_i|`` on the fit set used as the clip bound.
        method (`str`, defaults to `"mean_difference"`): how directions were fitted (recorded for model cards).
        coordinate_prior (`dict`, *optional*): per attribute name, the public histogram prior of its clipped
            coordinate on the fit set (``{"centers": [...], "probs": [...]}``, `dpdiffusion.privacy.postprocess`),
            for ``post_processing="posterior_mean"``; set by `fit`, public like the bounds.
    """

    @register_to_config
    def __init__(
        self,
        attribute_names: Sequence[str] = ("dark_skin", "long_hair"),
        latent_dim: int = 64,
        clip_quantile: float = 0.95,
        method: str = "mean_difference",
        coordinate_prior: dict | None = None,
    ):
        super().__init__()
        k = len(attribute_names)
        if k == 0 or k > latent_dim:
            raise ValueError(f"attribute_names must hold 1..latent_dim={latent_dim} names, got {len(attribute_names)}")
        if len(set(attribute_names)) != k:
            raise ValueError(f"attribute_names must be unique, got {list(attribute_names)}")
        if not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in (0, 1], got clip_quantile={clip_quantile}")
        eye = torch.eye(latent_dim)[:, :k]
        self.register_buffer("directions", eye.clone())  # (d, K), orthonormal columns
        self.register_buffer("center", torch.zeros(latent_dim))  # (d,)
        self.register_buffer("clip_bound_values", torch.ones(k))  # (K,)
        self.register_buffer("probe_accuracy", torch.zeros(k))  # (K,) diagnostic: accuracy of sign(a_i) on the fit set
        # public bound on ||z - c|| (same quantile), the clip bound of the centred residual for scope="latent"
        self.register_buffer("latent_norm_bound", torch.ones(()))

    # ------------------------------------------------------------------ public read-only views
    @property
    def names(self) -> tuple[str, ...]:
        """The attribute names, in storage order."""
        return tuple(self.config.attribute_names)

    @property
    def clip_bounds(self) -> dict[str, float]:
        """Public clip bound ``C_i`` per attribute name."""
        return {n: float(c) for n, c in zip(self.names, self.clip_bound_values.tolist())}

    def indices(self, attributes: Sequence[str] | None) -> list[int]:
        """Positions of ``attributes`` (all names when ``None``); unknown names raise ``ValueError``."""
        if attributes is None:
            return list(range(len(self.names)))
        if isinstance(attributes, str):
            attributes = [attributes]
        attributes = list(attributes)
        if not attributes:
            raise ValueError("attributes must name at least one attribute, got an empty list")
        unknown = [a for a in attributes if a not in self.names]
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; this model has directions for {list(self.names)}")
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"attributes must be unique, got {attributes}")
        return [self.names.index(a) for a in attributes]

    def basis(self, attributes: Sequence[str] | None = None) -> torch.Tensor:
        """The orthonormal matrix ``A_S`` (d, k) of the named attributes."""
        return self.directions[:, self.indices(attributes)]

    @property
    def residual_clip_bound(self) -> float:
        """Public bound on the norm of the centred residual ``(I - A_S A_S^T)(z - c)`` (any subset S)."""
        return float(self.latent_norm_bound)

    def prior(self, attributes: Sequence[str] | None = None) -> list[dict]:
        """The public fit-time priors of the named attributes' clipped coordinates (`posterior_mean`).

        Raises:
            ValueError: if the model was fitted without them (fit it again, or use ``post_processing="clip"``).
        """
        names = [self.names[i] for i in self.indices(attributes)]
        stored = self.config.coordinate_prior or {}
        missing = [n for n in names if n not in stored]
        if missing:
            raise ValueError(f"these attribute directions store no coordinate prior for {missing}; refit them "
                             "(AttributeDirections.fit stores one) or use post_processing='clip'")
        return [stored[n] for n in names]

    def clip_bound_tensor(self, attributes: Sequence[str] | None = None) -> torch.Tensor:
        """Clip bounds ``C_S`` (k,) of the named attributes, in the order given."""
        return self.clip_bound_values[self.indices(attributes)]

    # ------------------------------------------------------------------ decomposition
    def project(self, z: torch.Tensor, attributes: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Split latents ``z`` (B, d) into protected coordinates ``a`` (B, k) and residual ``r`` (B, d)."""
        basis = self.basis(attributes).to(dtype=z.dtype, device=z.device)  # (d, k)
        a = (z - self.center.to(dtype=z.dtype, device=z.device)) @ basis  # (B, k)
        r = z - a @ basis.T  # (B, d)
        return a, r

    def compose(self, a: torch.Tensor, r: torch.Tensor, attributes: Sequence[str] | None = None) -> torch.Tensor:
        """Inverse of ``project``: ``z = A_S a + r``."""
        basis = self.basis(attributes).to(dtype=r.dtype, device=r.device)
        if a.shape[-1] != basis.shape[1]:
            raise ValueError(f"a has {a.shape[-1]} coordinates but {basis.shape[1]} attributes were named")
        return a @ basis.T + r

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        latents: torch.Tensor,
        labels: torch.Tensor,
        attribute_names: Sequence[str],
        *,
        clip_quantile: float = 0.95,
        method: str = "mean_difference",
        l2: float = 1e-3,
        steps: int = 300,
    ) -> "AttributeDirections":
        """Fit directions by linear probes on labelled latents.

        Args:
            latents (`torch.Tensor`): ``(N, d)`` latents of a training set (never the images to be protected).
            labels (`torch.Tensor`): ``(N, K)`` binary labels, one column per name.
            attribute_names (`Sequence[str]`): names, in the order of orthonormalisation (protected ones first).
            clip_quantile (`float`): quantile of ``|a_i|`` used as the public clip bound.
            method (`str`): ``"mean_difference"`` (class-mean difference, linearly guarded residual) or
                ``"logistic"`` (L2-regularised logistic regression weights).

        Returns:
            `AttributeDirections` with orthonormal directions, centre and clip bounds set.

        Raises:
            ValueError: on shape mismatch, a label column with a single class, or an unknown method.
        """
        latents = torch.as_tensor(latents, dtype=torch.float64)
        labels = torch.as_tensor(labels, dtype=torch.float64)
        if latents.ndim != 2 or labels.ndim != 2 or labels.shape[0] != latents.shape[0]:
            raise ValueError(f"latents (N, d) and labels (N, K) must align, got {tuple(latents.shape)} and {tuple(labels.shape)}")
        if labels.shape[1] != len(attribute_names):
            raise ValueError(f"labels has {labels.shape[1]} columns but {len(attribute_names)} attribute_names were given")
        if method not in ("mean_difference", "logistic"):
            raise ValueError(f"method must be 'mean_difference' or 'logistic', got method={method!r}")
        n, d = latents.shape
        center = latents.mean(0)
        raw = []
        for i, name in enumerate(attribute_names):
            y = labels[:, i] > 0.5
            if y.all() or (~y).all():
                raise ValueError(f"attribute {name!r} has a single class in the fit set; cannot fit a direction")
            if method == "mean_difference":
                raw.append(latents[y].mean(0) - latents[~y].mean(0))
            else:
                raw.append(_logistic_direction(latents - center, y.double(), l2=l2, steps=steps))
        q, rr = torch.linalg.qr(torch.stack(raw, 1))  # (d, K)
        signs = torch.sign(torch.diagonal(rr))
        signs[signs == 0] = 1.0
        q = q * signs  # positive coordinate means "attribute present"
        coords = (latents - center) @ q  # (N, K)
        bounds = torch.quantile(coords.abs(), clip_quantile, dim=0).clamp_min(1e-6)
        acc = ((coords > 0) == (labels > 0.5)).double().mean(0)
        from ..privacy.postprocess import coordinate_prior

        prior = coordinate_prior(coords.float().double().numpy(), bounds.float().tolist())  # public, fit-time
        model = cls(attribute_names=list(attribute_names), latent_dim=d, clip_quantile=clip_quantile, method=method,
                    coordinate_prior=dict(zip(attribute_names, prior)))
        model.directions.copy_(q.float())
        model.center.copy_(center.float())
        model.clip_bound_values.copy_(bounds.float())
        model.probe_accuracy.copy_(acc.float())
        model.latent_norm_bound.copy_(torch.quantile((latents - center).norm(dim=1), clip_quantile).float())
        return model


def _logistic_direction(x: torch.Tensor, y: torch.Tensor, *, l2: float, steps: int) -> torch.Tensor:
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()
