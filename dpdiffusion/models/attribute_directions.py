"""Attribute directions in the semantic latent space, the subspace a call protects and its public clip bounds.

For each attribute name the model stores its *raw* unit direction ``u_i`` in z-space (``raw_directions``, d x K):
the class-mean difference (or logistic probe) fitted on labelled latents of a *training* set, or the official
classifier's logit direction (``dpdiffusion.models.diffae_conversion``). A call that protects the attributes
``S = (s_1, ..., s_k)`` -- in the order the caller names them -- orthonormalises *their own* raw directions:

    U_S = [u_{s_1} ... u_{s_k}] = A_S R_S        # QR, R_S upper triangular with a positive diagonal
    a = A_S^T (z - c)                            # (B, k) protected coordinates, centred at the public centre c
    r = z - A_S a                                # (B, d) residual: identity, pose, expression, ...
    z = A_S a + r                                # ``compose``: the exact inverse of ``project``

so ``span(A_S) = span(U_S)``: every named direction lies wholly in the noised subspace, whatever the stored order and
whichever subset is named, and the residual has no component along any of them. Order convention: coordinate i is
the i-th Gram-Schmidt vector of the named raw directions (``A_S[:, 0] = u_{s_1}``; ``A_S[:, i]`` is ``u_{s_i}``
minus its part along the earlier named ones, normalised); the sign makes ``a_i`` grow along ``u_{s_i}``. The
*subspace* does not depend on the order, only how it is cut into coordinates (and so how the weights share the
budget, see below).

Direction fitting (``method="mean_difference"``, the default) uses the difference of the class-conditional means of
z. Removing the span of those directions equalises the class-conditional means of the residual, which is exactly
the condition for the residual to be *linearly guarded*: no linear classifier on r beats the constant predictor
(LEACE, Belrose et al., NeurIPS 2023, Theorem 3.1). ``method="logistic"`` uses a logistic-regression probe instead.
Non-linear read-outs of the attribute from r are *not* excluded; the evaluation measures them.

**Public statistics of any subset.** The clip bound ``C_i`` of each coordinate is the ``clip_quantile`` of ``|a_i|``
over the fit set, and the posterior-mean prior is the histogram of the clipped coordinates over the fit set
(`dpdiffusion.privacy.postprocess.coordinate_prior`). Both depend on the subset's basis, so the model stores the fit
set's centred *raw* coordinates ``b = U^T (z - c)`` (``fit_raw_coordinates``, n x K, fixed at fit time, public like
the bounds), from which the coordinates of any subset follow exactly, ``a = R_S^{-T} b_S`` (rows: ``a R_S = b_S``),
and its bounds and prior are recomputed deterministically (cached per subset). They are never computed from an image
being protected. The fit set must therefore be public data (SynthFaces, the official latents); ``fit`` can store an
evenly spaced subsample (``fit_sample_size``). A subset that is a *prefix of the stored order, named in that order*
has the stored-order basis ``directions[:, :k]``, bounds ``clip_bound_values[:k]`` and stored prior: these are
exactly its own numbers (computed at fit time in float64), used as stored.

**Weights and the guarantee.** With weights ``w_i`` the i-th coordinate (the i-th Gram-Schmidt vector) receives the
i-th named attribute's budget share, ``rho_i = (w_i / W) rho`` and ``sigma_i = 2 C_i / sqrt(2 rho_i)``. The release
``clip(a) + N(0, diag(sigma^2))`` is one Gaussian mechanism on the clipped coordinates with per-coordinate L2
sensitivity ``Delta_i = 2 C_i``, whatever the basis. Two attribute-neighbours for S have the same residual and
differ only inside ``span(A_S) = span(U_S)``; each clipped coordinate then moves by at most ``2 C_i``, so the whitened
difference has norm at most ``sqrt(sum_i (2 C_i / sigma_i)^2) = 1 / m`` and the release is (epsilon, delta)-DP for
*every* pair that differs within the subspace (zCDP composition of the k coordinates, Bun & Steinke 2016
Proposition 1.6 and Lemma 1.7): the guarantee covers the whole subspace, in any basis of it; the order and the
weights only decide how the noise is spread over it. ``clip_bounds`` is public and these bounds define the
sensitivity of the privacy mechanism (``dpdiffusion.privacy.mechanism``).

**Models saved before raw directions were stored** (``fit_sample_size=0`` in the config: no ``raw_directions``,
no ``fit_raw_coordinates``) still load and keep the old behaviour: the stored-order basis ``directions`` (QR of all
directions in the stored order), so an attribute stored after others is protected only in its part orthogonal to
them. A subset that is not a prefix of the stored order (as a set) then raises a ``PartialProtectionWarning`` and
the report says which basis was used; ``scripts/add_raw_directions.py`` adds the raw directions and the fit-set
coordinates to such a model from its fit set.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class PartialProtectionWarning(UserWarning):
    """A named attribute's direction lies only partly in the noised subspace (directions saved without their raw
    directions: the stored-order basis is used)."""


class AttributeDirections(ModelMixin, ConfigMixin):
    r"""Raw attribute directions ``U`` (d x K), a public centre ``c``, public clip bounds and the subset bases.

    Args:
        attribute_names (`list[str]`): the attribute names, in the stored order (the order of ``directions``).
        latent_dim (`int`): dimension ``d`` of the semantic latent.
        clip_quantile (`float`, defaults to 0.95): quantile of ``|a_i|`` on the fit set used as the clip bound.
        method (`str`, defaults to `"mean_difference"`): how directions were fitted (recorded for model cards).
        coordinate_prior (`dict`, *optional*): per attribute name, the public histogram prior of its stored-order
            clipped coordinate on the fit set (``{"centers": [...], "probs": [...]}``,
            `dpdiffusion.privacy.postprocess`), for ``post_processing="posterior_mean"``; set by `fit`.
        fit_sample_size (`int`, defaults to 0): rows ``n`` of the stored public fit-set raw coordinates
            (``fit_raw_coordinates``, n x K) next to ``raw_directions``; 0 for a model saved before they were stored
            (the stored-order basis is then used for every subset, module docstring).

    Buffers: ``directions`` (d, K) the QR of the raw directions in the stored order (the basis of all attributes
    protected in the stored order); ``clip_bound_values`` (K,) and ``probe_accuracy`` (K,) of those coordinates;
    ``center`` (d,); ``latent_norm_bound`` (); and with ``fit_sample_size > 0`` ``raw_directions`` (d, K, unit
    columns) and ``fit_raw_coordinates`` (n, K).
    """

    @register_to_config
    def __init__(
        self,
        attribute_names: Sequence[str] = ("dark_skin", "long_hair"),
        latent_dim: int = 64,
        clip_quantile: float = 0.95,
        method: str = "mean_difference",
        coordinate_prior: dict | None = None,
        fit_sample_size: int = 0,
    ):
        super().__init__()
        k = len(attribute_names)
        if k == 0 or k > latent_dim:
            raise ValueError(f"attribute_names must hold 1..latent_dim={latent_dim} names, got {len(attribute_names)}")
        if len(set(attribute_names)) != k:
            raise ValueError(f"attribute_names must be unique, got {list(attribute_names)}")
        if not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be in (0, 1], got clip_quantile={clip_quantile}")
        if isinstance(fit_sample_size, bool) or not isinstance(fit_sample_size, int) or fit_sample_size < 0:
            raise ValueError(f"fit_sample_size must be an integer >= 0, got fit_sample_size={fit_sample_size!r}")
        eye = torch.eye(latent_dim)[:, :k]
        self.register_buffer("directions", eye.clone())  # (d, K), orthonormal columns
        self.register_buffer("center", torch.zeros(latent_dim))  # (d,)
        self.register_buffer("clip_bound_values", torch.ones(k))  # (K,)
        self.register_buffer("probe_accuracy", torch.zeros(k))  # (K,) diagnostic: accuracy of sign(a_i) on the fit set
        # public bound on ||z - c|| (same quantile), the clip bound of the centred residual for scope="latent"
        self.register_buffer("latent_norm_bound", torch.ones(()))
        if fit_sample_size > 0:
            self.register_buffer("raw_directions", eye.clone())  # (d, K), unit columns, stored order
            self.register_buffer("fit_raw_coordinates", torch.zeros(fit_sample_size, k))  # (n, K) = (z - c) @ U
        self._subsets: dict = {}  # (indices, buffer versions) -> float64 statistics of that subset's basis

    # ------------------------------------------------------------------ public read-only views
    @property
    def names(self) -> tuple[str, ...]:
        """The attribute names, in storage order."""
        return tuple(self.config.attribute_names)

    @property
    def has_raw_directions(self) -> bool:
        """Whether the raw directions and the public fit-set coordinates are stored (``False``: a model saved before
        they were, which protects the stored-order basis)."""
        return int(self.config.fit_sample_size) > 0

    @property
    def clip_bounds(self) -> dict[str, float]:
        """Public clip bound ``C_i`` of each attribute protected *alone* (with raw directions: the bound of its own
        raw coordinate; for a model without them, the stored-order bound). Other subsets: `clip_bound_tensor`."""
        if not self.has_raw_directions:
            return {n: float(c) for n, c in zip(self.names, self.clip_bound_values.tolist())}
        return {n: float(self.clip_bound_tensor([n])[0]) for n in self.names}

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

    def covers(self, attributes: Sequence[str] | None = None) -> bool:
        """Whether every named attribute's direction lies wholly in the span of ``basis(attributes)``: always with
        raw directions; without them only for a prefix of the stored order (in any order)."""
        idx = self.indices(attributes)
        return self.has_raw_directions or sorted(idx) == list(range(len(idx)))

    def describe_basis(self, attributes: Sequence[str] | None = None) -> str:
        """The subspace ``basis(attributes)`` spans, in words (the reports' neighbouring relation quotes it)."""
        names = [self.names[i] for i in self.indices(attributes)]
        listed = ", ".join(names)
        if self.has_raw_directions:
            if len(names) == 1:
                return f"span{{raw direction of {listed}}}"
            return f"span{{raw directions of {listed}}}, orthonormalised (Gram-Schmidt) in this order"
        if self.covers(names):
            return (f"span{{directions of {listed}}} (a prefix of the stored order {list(self.names)}: every named "
                    "direction lies wholly in it)")
        return (f"the stored-order orthonormal coordinates of {listed} (directions without raw directions: each is "
                f"orthogonalised against the attributes stored before it in {list(self.names)}, so only part of "
                "its direction is protected)")

    def _is_stored_prefix(self, idx: Sequence[int]) -> bool:
        return list(idx) == list(range(len(idx)))

    def _subset(self, idx: Sequence[int]) -> dict:
        """float64 CPU statistics of the basis of ``idx`` (raw directions only): ``basis`` (d, k), ``r`` (k, k),
        ``coords`` (n, k) of the fit sample, ``bounds`` (k,); cached while the buffers are unchanged."""
        raw, sample = self.raw_directions, self.fit_raw_coordinates
        key = (tuple(idx), raw.data_ptr(), raw._version, sample.data_ptr(), sample._version,
               float(self.config.clip_quantile))
        hit = self._subsets.get(key)
        if hit is None:
            if len(self._subsets) >= 256:
                self._subsets.clear()
            u = raw.detach().to("cpu", torch.float64)[:, list(idx)]  # (d, k)
            q, r = _positive_qr(u)
            weak = [self.names[i] for i, v in zip(idx, torch.diagonal(r).tolist()) if v < 1e-6]
            if weak:
                raise ValueError(f"the raw directions of {weak} lie (almost) in the span of the attributes named before "
                                 f"them in {[self.names[i] for i in idx]}; name fewer attributes")
            b = sample.detach().to("cpu", torch.float64)[:, list(idx)]  # (n, k)
            coords = torch.linalg.solve_triangular(r, b, upper=True, left=False)  # a R = b: a = A^T (z - c)
            bounds = torch.quantile(coords.abs(), float(self.config.clip_quantile), dim=0).clamp_min(1e-6)
            hit = self._subsets[key] = {"basis": q, "r": r, "coords": coords, "bounds": bounds}
        return hit

    def _check_cover(self, idx: Sequence[int]) -> None:
        names = [self.names[i] for i in idx]
        if not self.covers(names):
            warnings.warn(
                f"these attribute directions were saved without raw directions: protecting {names} noises only the "
                f"stored-order coordinates, each orthogonalised against the attributes stored before it in "
                f"{list(self.names)}, so part of their directions stays in the residual; add them with "
                "scripts/add_raw_directions.py (or fit the directions again)", PartialProtectionWarning, stacklevel=3)

    def basis(self, attributes: Sequence[str] | None = None) -> torch.Tensor:
        """The orthonormal matrix ``A_S`` (d, k) of the named attributes: the QR of their raw directions in the order
        given (module docstring); without raw directions, the stored-order columns (with a warning where that does
        not cover the named directions)."""
        idx = self.indices(attributes)
        if not self.has_raw_directions or self._is_stored_prefix(idx):
            if not self.has_raw_directions:
                self._check_cover(idx)
            return self.directions[:, idx]
        return self._subset(idx)["basis"].to(device=self.directions.device, dtype=self.directions.dtype)

    @property
    def residual_clip_bound(self) -> float:
        """Public bound on the norm of the centred residual ``(I - A_S A_S^T)(z - c)`` (any subset S)."""
        return float(self.latent_norm_bound)

    def prior(self, attributes: Sequence[str] | None = None) -> list[dict]:
        """The public fit-time priors of the named attributes' clipped coordinates (`posterior_mean`), in the basis of
        ``basis(attributes)``: recomputed from the stored fit-set coordinates (the stored prior for a prefix of the
        stored order).

        Raises:
            ValueError: if the model has neither raw directions nor a stored prior (fit it again, or use
                ``post_processing="clip"``).
        """
        idx = self.indices(attributes)
        names = [self.names[i] for i in idx]
        stored = self.config.coordinate_prior or {}
        if self.has_raw_directions and not (self._is_stored_prefix(idx) and all(n in stored for n in names)):
            from ..privacy.postprocess import coordinate_prior

            stats = self._subset(idx)
            if "prior" not in stats:
                bounds = stats["bounds"].float().double().tolist()  # the float32 bounds the mechanism uses
                stats["prior"] = coordinate_prior(stats["coords"].numpy(), bounds)
            return [dict(p) for p in stats["prior"]]
        missing = [n for n in names if n not in stored]
        if missing:
            raise ValueError(f"these attribute directions store no coordinate prior for {missing}; refit them "
                             "(AttributeDirections.fit stores one) or use post_processing='clip'")
        return [stored[n] for n in names]

    def clip_bound_tensor(self, attributes: Sequence[str] | None = None) -> torch.Tensor:
        """Clip bounds ``C_S`` (k,) of the coordinates of ``basis(attributes)``, in the order given."""
        idx = self.indices(attributes)
        if not self.has_raw_directions or self._is_stored_prefix(idx):
            return self.clip_bound_values[idx]
        return self._subset(idx)["bounds"].to(device=self.clip_bound_values.device,
                                              dtype=self.clip_bound_values.dtype)

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
    def from_raw_directions(
        cls,
        raw_directions: torch.Tensor,
        latents: torch.Tensor,
        attribute_names: Sequence[str],
        *,
        center: torch.Tensor | None = None,
        clip_quantile: float = 0.95,
        method: str = "mean_difference",
        labels: torch.Tensor | None = None,
        fit_sample_size: int | None = None,
    ) -> "AttributeDirections":
        """Directions from raw directions and the public fit-set latents: stores the raw unit directions, the
        stored-order basis (QR in the order of ``attribute_names``) with its bounds and prior, and the fit set's raw
        coordinates (all rows, or ``fit_sample_size`` evenly spaced ones) for the bases of other subsets.

        Args:
            raw_directions (`torch.Tensor`): ``(d, K)`` directions (any non-zero norm; normalised here).
            latents (`torch.Tensor`): ``(N, d)`` latents of the public fit set (never the images to be protected).
            attribute_names (`Sequence[str]`): the K names, in the stored order.
            center (`torch.Tensor`, *optional*): ``(d,)`` public centre; default the mean of ``latents``.
            labels (`torch.Tensor`, *optional*): ``(N, K)`` binary labels for the probe accuracy of the stored-order
                coordinates; without them it is the sign agreement of each stored-order coordinate with its raw one.
            fit_sample_size (`int`, *optional*): rows of the fit set whose raw coordinates are stored (default all).

        Raises:
            ValueError: on shape mismatches, a zero direction, directions that are linearly dependent or a bad
                ``fit_sample_size``.
        """
        raw = torch.as_tensor(raw_directions, dtype=torch.float64)
        latents = torch.as_tensor(latents, dtype=torch.float64)
        n, d = latents.shape
        if raw.ndim != 2 or raw.shape != (d, len(attribute_names)):
            raise ValueError(f"raw_directions must be (d, K) = ({d}, {len(attribute_names)}), got {tuple(raw.shape)}")
        norms = raw.norm(dim=0)
        if not bool((norms > 0).all()):
            raise ValueError(f"raw_directions must be non-zero, got a zero column for "
                             f"{[a for a, v in zip(attribute_names, norms.tolist()) if v == 0]}")
        size = n if fit_sample_size is None else fit_sample_size
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= n:
            raise ValueError(f"fit_sample_size must be an integer in [1, {n}] (the fit set's size), got "
                             f"fit_sample_size={fit_sample_size!r}")
        unit = raw / norms  # (d, K)
        center = latents.mean(0) if center is None else torch.as_tensor(center, dtype=torch.float64).reshape(d)
        q, r = _positive_qr(unit)  # positive coordinate means "attribute present"
        if bool((torch.diagonal(r) < 1e-6).any()):
            raise ValueError("raw_directions must be linearly independent (QR in the stored order has a zero pivot)")
        coords = (latents - center) @ q  # (N, K)
        bounds = torch.quantile(coords.abs(), clip_quantile, dim=0).clamp_min(1e-6)
        if labels is not None:
            acc = ((coords > 0) == (torch.as_tensor(labels, dtype=torch.float64) > 0.5)).double().mean(0)
        else:
            acc = ((coords > 0) == ((latents - center) @ unit > 0)).double().mean(0)
        from ..privacy.postprocess import coordinate_prior

        prior = coordinate_prior(coords.float().double().numpy(), bounds.float().tolist())  # public, fit-time
        rows = torch.linspace(0, n - 1, size, dtype=torch.float64).round().long()  # evenly spaced, deterministic
        model = cls(attribute_names=list(attribute_names), latent_dim=d, clip_quantile=clip_quantile, method=method,
                    coordinate_prior=dict(zip(attribute_names, prior)), fit_sample_size=size)
        model.directions.copy_(q.float())
        model.center.copy_(center.float())
        model.clip_bound_values.copy_(bounds.float())
        model.probe_accuracy.copy_(acc.float())
        model.latent_norm_bound.copy_(torch.quantile((latents - center).norm(dim=1), clip_quantile).float())
        model.raw_directions.copy_(unit.float())
        model.fit_raw_coordinates.copy_(((latents[rows] - center) @ unit).float())
        return model

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
        fit_sample_size: int | None = None,
    ) -> "AttributeDirections":
        """Fit directions by linear probes on labelled latents.

        Args:
            latents (`torch.Tensor`): ``(N, d)`` latents of a public training set (never the images to be protected).
            labels (`torch.Tensor`): ``(N, K)`` binary labels, one column per name.
            attribute_names (`Sequence[str]`): names, in the stored order (that of ``directions``; a call may name
                any subset in any order, module docstring).
            clip_quantile (`float`): quantile of ``|a_i|`` used as the public clip bound.
            method (`str`): ``"mean_difference"`` (class-mean difference, linearly guarded residual) or
                ``"logistic"`` (L2-regularised logistic regression weights).
            fit_sample_size (`int`, *optional*): rows of the fit set whose raw coordinates are stored for the bounds
                and priors of any subset (default all; they are published with the model).

        Returns:
            `AttributeDirections` with raw and stored-order directions, centre, clip bounds and the fit sample set.

        Raises:
            ValueError: on shape mismatch, a label column with a single class, or an unknown method.
        """
        latents = torch.as_tensor(latents, dtype=torch.float64)
        labels = torch.as_tensor(labels, dtype=torch.float64)
        raw = raw_directions_from_labels(latents, labels, attribute_names, method=method, l2=l2, steps=steps)
        return cls.from_raw_directions(raw, latents, attribute_names, clip_quantile=clip_quantile, method=method,
                                       labels=labels, fit_sample_size=fit_sample_size)


def raw_directions_from_labels(latents: torch.Tensor, labels: torch.Tensor, attribute_names: Sequence[str], *,
                               method: str = "mean_difference", l2: float = 1e-3, steps: int = 300) -> torch.Tensor:
    """The raw (unit, float64) directions ``(d, K)`` of `AttributeDirections.fit`, one per label column.

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
    raw = torch.stack(raw, 1)  # (d, K)
    return raw / raw.norm(dim=0).clamp_min(1e-300)


def _positive_qr(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``u = q r`` with ``r`` upper triangular with a non-negative diagonal (q_i . u_i >= 0)."""
    q, r = torch.linalg.qr(u)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs, r * signs[:, None]


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
