"""Conversion of the official Diffusion Autoencoder checkpoints (``phizaz/diffae``) to dpdiffusion models.

Inputs (downloaded by the user from the official README):

- ``last.ckpt``: a PyTorch Lightning checkpoint, ``{"state_dict": {"model.*", "ema_model.*", "x_T", ...},
  "hyper_parameters": TrainConfig.as_dict_jsonable()}``. The EMA weights are converted (the official renderer,
  ``LitModel.render``/``encode``, uses ``ema_model``).
- ``latent.ckpt`` (``latent.pkl`` in the official tree): ``{"conds": (N, d), "conds_mean": (d,), "conds_std": (d,)}``,
  the semantic latents of the training set.
- optionally ``*_autoenc_cls/last.ckpt``: the linear classifier of the 40 CelebA-HQ attributes,
  ``logit = ema_classifier((z - conds_mean) / conds_std)``.

Enum-valued ``TrainConfig`` fields are not stored in ``hyper_parameters`` (``as_dict_jsonable`` drops them); the
conversion assumes the official defaults of the autoencoder templates: ``model_name=beatgans_autoenc``,
``train_mode=diffusion``, ``beatgans_gen_type=ddim``, ``beatgans_model_mean_type=eps``,
``net_beatgans_resnet_scale_at=after_norm``; the latent DPM (``net_latent_net_type``) is not converted.

Attribute directions (``attribute_directions_from_classifier``): in z-space the official logit is affine,
``logit_i(z) = w'_i^T (z - m) + b_i`` with ``w'_i = w_i / s`` (m, s: ``conds_mean``, ``conds_std``). The raw unit
directions ``u_i = w'_i / ||w'_i||`` are stored as they are (``raw_directions``) with the public centre ``c = m`` and
the training latents' raw coordinates ``U^T (conds - m)`` (``fit_raw_coordinates``). A call that protects ``S``
orthonormalises the raw directions of S in the order it names them (``U_S = A_S R_S``, R upper triangular with a
positive diagonal; `AttributeDirections`), so the coordinates ``a = A_S^T (z - m)`` satisfy exactly

    logit_S(z) - b_S = diag(||w'_S||) R_S^T a           (lower triangular: logit_{s_i} depends on a_1 .. a_i only)

Consequences, for *any* subset S and any order: (1) an attribute protected alone has the coordinate
``(logit_i - b_i) / ||w'_i||``; (2) ``span(A_S) = span(w'_S)``: the official logits of S are an invertible affine
function of the protected coordinates and do not depend on the residual ``r`` at all, so noising ``a_S`` is noising
exactly those logits. ``attribute_order`` (the converter's ``--attributes``) only chooses which attributes are kept
and the stored order (``directions``, the basis of all of them in that order). The clip bounds of any subset are the
``clip_quantile`` of ``|a_i|`` over the training latents ``conds`` (public, fixed at conversion time).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
from diffusers import DDIMScheduler

from .attribute_directions import AttributeDirections
from .diffae_encoder import DiffAESemanticEncoder
from .diffae_unet import DiffAEUNet2DModel

logger = logging.getLogger(__name__)

# the official order and names (dataset.py, CelebAttrDataset.id_to_cls)
CELEBA_HQ_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)

# official TrainConfig defaults of the fields read (config.py), used when a field is absent
_TRAIN_CONFIG_DEFAULTS = dict(
    img_size=64, net_ch=64, net_ch_mult=None, net_attn=None, net_beatgans_attn_head=1,
    net_beatgans_embed_channels=512, style_ch=512, net_enc_channel_mult=None, net_enc_attn=None,
    net_enc_pool="adaptivenonzero", net_num_res_blocks=2, net_num_input_res_blocks=None, net_enc_num_res_blocks=2,
    net_beatgans_resnet_two_cond=False, net_beatgans_resnet_cond_channels=None, net_resblock_updown=True,
    net_enc_use_time=False, T=1000, beta_scheduler="linear", beatgans_rescale_timesteps=False,
)
ASSUMED_ENUM_DEFAULTS = {"model_name": "beatgans_autoenc", "train_mode": "diffusion", "beatgans_gen_type": "ddim",
                         "beatgans_model_mean_type": "eps", "net_beatgans_resnet_scale_at": "after_norm"}


def _hp(hparams: Mapping[str, Any], key: str):
    return hparams.get(key, _TRAIN_CONFIG_DEFAULTS[key])


def _tuple(v):
    return None if v is None else tuple(int(x) for x in v)


def configs_from_hyper_parameters(hparams: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """UNet, encoder and scheduler configs from the official ``hyper_parameters`` (``TrainConfig`` fields), as the
    official ``TrainConfig.make_model_conf`` builds ``BeatGANsAutoencConfig``.

    Raises:
        ValueError: for a configuration the official autoencoder sampler does not use (naming the field).
    """
    if not _hp(hparams, "net_beatgans_resnet_two_cond"):
        raise ValueError("net_beatgans_resnet_two_cond must be True for the official autoencoder, got False")
    if _hp(hparams, "net_enc_use_time"):
        raise ValueError("net_enc_use_time must be False (the official encoder has no time condition), got True")
    if _hp(hparams, "beta_scheduler") != "linear":
        raise ValueError(f"beta_scheduler must be 'linear', got beta_scheduler={_hp(hparams, 'beta_scheduler')!r}")
    t = int(_hp(hparams, "T"))
    if _hp(hparams, "beatgans_rescale_timesteps") and t != 1000:
        raise ValueError(f"beatgans_rescale_timesteps=True is only supported with T=1000, got T={t}")
    ch_mult = _tuple(_hp(hparams, "net_ch_mult"))
    if ch_mult is None:
        raise ValueError("hyper_parameters must give net_ch_mult (a tuple of ints), got None")
    embed = int(_hp(hparams, "net_beatgans_embed_channels"))
    cond_ch = _hp(hparams, "net_beatgans_resnet_cond_channels")
    style = int(_hp(hparams, "style_ch"))
    if (cond_ch or embed) != style:
        raise ValueError(f"style_ch={style} must equal net_beatgans_resnet_cond_channels or "
                         f"net_beatgans_embed_channels={cond_ch or embed} (the width of the semantic condition)")
    attn = _tuple(_hp(hparams, "net_attn")) or ()
    unet = dict(sample_size=int(_hp(hparams, "img_size")), model_channels=int(_hp(hparams, "net_ch")),
                channel_mult=ch_mult, num_res_blocks=int(_hp(hparams, "net_num_res_blocks")),
                num_input_res_blocks=_hp(hparams, "net_num_input_res_blocks"), embed_channels=embed,
                cond_channels=cond_ch, attention_resolutions=attn,
                num_heads=int(_hp(hparams, "net_beatgans_attn_head")), num_head_channels=-1,
                resblock_updown=bool(_hp(hparams, "net_resblock_updown")), resnet_two_cond=True)
    encoder = dict(sample_size=unet["sample_size"], model_channels=unet["model_channels"], latent_dim=style,
                   num_res_blocks=int(_hp(hparams, "net_enc_num_res_blocks")),
                   channel_mult=_tuple(_hp(hparams, "net_enc_channel_mult")) or ch_mult,
                   attention_resolutions=_tuple(_hp(hparams, "net_enc_attn")) or attn, num_heads=unet["num_heads"],
                   num_head_channels=-1, resblock_updown=unet["resblock_updown"], pool=_hp(hparams, "net_enc_pool"))
    scale = 1000 / t  # get_named_beta_schedule("linear", T)
    scheduler = dict(num_train_timesteps=t, beta_start=scale * 0.0001, beta_end=scale * 0.02, beta_schedule="linear",
                     clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True, steps_offset=0,
                     timestep_spacing="leading", prediction_type="epsilon")
    return unet, encoder, scheduler


def convert_models(state_dict: Mapping[str, torch.Tensor], hparams: Mapping[str, Any], *, prefix: str = "ema_model."
                   ) -> tuple[DiffAEUNet2DModel, DiffAESemanticEncoder, DDIMScheduler]:
    """Build the UNet, encoder and scheduler and load the ``prefix`` (EMA by default) weights, strictly.

    Raises:
        ValueError: if no tensor has ``prefix`` or a tensor is missing, unexpected or of another shape.
    """
    unet_cfg, enc_cfg, sched_cfg = configs_from_hyper_parameters(hparams)
    weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"the checkpoint's state_dict has no '{prefix}*' tensors (keys start with "
                         f"{sorted({k.split('.')[0] for k in state_dict})})")
    enc_w = {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}
    unet_w = {k: v for k, v in weights.items() if not k.startswith(("encoder.", "latent_net."))}
    unet, encoder = DiffAEUNet2DModel(**unet_cfg), DiffAESemanticEncoder(**enc_cfg)
    for name, model, w in (("UNet", unet, unet_w), ("encoder", encoder, enc_w)):
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(w)), sorted(set(w) - set(expected))
        bad = [k for k in expected if k in w and tuple(w[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or bad:
            raise ValueError(f"{name} weights do not match the architecture of hyper_parameters: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {bad[:5]}")
        model.load_state_dict({k: v.to(torch.float32) for k, v in w.items()}, strict=True)
    if any(k.startswith("latent_net.") for k in weights):
        logger.warning("the checkpoint has a latent DPM (latent_net.*); it is not converted")
    return unet.eval(), encoder.eval(), DDIMScheduler(**sched_cfg)


def attribute_directions_from_classifier(
    weight: torch.Tensor,
    bias: torch.Tensor,
    conds_mean: torch.Tensor,
    conds_std: torch.Tensor,
    conds: torch.Tensor,
    *,
    attribute_names: Sequence[str] = CELEBA_HQ_ATTRIBUTES,
    attribute_order: Sequence[str] | None = None,
    clip_quantile: float = 0.95,
    fit_sample_size: int | None = None,
) -> AttributeDirections:
    r"""``AttributeDirections`` from the official linear classifier over normalised latents.

    Args:
        weight (`torch.Tensor`): ``(K, d)`` ``ema_classifier.weight``; bias (`torch.Tensor`): ``(K,)``.
        conds_mean (`torch.Tensor`), conds_std (`torch.Tensor`): ``(d,)`` normalisation of the classifier.
        conds (`torch.Tensor`): ``(N, d)`` training latents (``latent.ckpt``) for the public clip bounds.
        attribute_names (`Sequence[str]`): names of the classifier's rows (official order).
        attribute_order (`Sequence[str]`, *optional*): the names to keep, in the stored order; default all, in the
            official order. Any subset of them can be protected, in any order (module docstring).
        clip_quantile (`float`): quantile of ``|a_i|`` over ``conds`` used as the clip bound ``C_i``.
        fit_sample_size (`int`, *optional*): rows of ``conds`` whose raw coordinates are stored for the bounds and
            priors of every subset (default all; evenly spaced rows otherwise).

    Returns:
        `AttributeDirections` with ``center = conds_mean``, the raw directions ``u_i`` and the stored-order basis.

    Raises:
        ValueError: on shape mismatches, unknown or repeated names, ``clip_quantile`` outside (0, 1] or a bad
        ``fit_sample_size``.
    """
    weight, bias = weight.double(), bias.double()
    m, s, conds = conds_mean.double().reshape(-1), conds_std.double().reshape(-1), conds.double()
    k, d = weight.shape
    if bias.shape != (k,) or m.shape != (d,) or s.shape != (d,) or conds.ndim != 2 or conds.shape[1] != d:
        raise ValueError(f"classifier weight (K, d)={tuple(weight.shape)}, bias (K,), conds_mean/std (d,) and conds "
                         f"(N, d) must agree, got {tuple(bias.shape)}, {tuple(m.shape)}, {tuple(s.shape)}, "
                         f"{tuple(conds.shape)}")
    if len(attribute_names) != k:
        raise ValueError(f"attribute_names has {len(attribute_names)} names for {k} classifier rows")
    if not 0.0 < clip_quantile <= 1.0:
        raise ValueError(f"clip_quantile must be in (0, 1], got clip_quantile={clip_quantile}")
    order = list(attribute_order) if attribute_order is not None else list(attribute_names)
    unknown = [n for n in order if n not in attribute_names]
    if unknown or len(set(order)) != len(order) or not order:
        raise ValueError(f"attribute_order must be distinct names among {list(attribute_names)}, got {order}")
    rows = [list(attribute_names).index(n) for n in order]
    w_z = weight[rows] / s  # (k, d): logit = w_z (z - m) + b
    logits = (conds - m) @ w_z.T + bias[rows]  # (N, k) official logits of the training latents
    model = AttributeDirections.from_raw_directions(
        w_z.T, conds, order, center=m, clip_quantile=clip_quantile, method="official_classifier",
        labels=(logits > bias[rows]).double(), fit_sample_size=fit_sample_size)  # accuracy: sign agreement
    return model


def attribute_directions_from_latents(conds: torch.Tensor, conds_mean: torch.Tensor, *, clip_quantile: float = 0.95,
                                      num_axes: int = 1) -> AttributeDirections:
    """Without a classifier: ``num_axes`` principal axes of the training latents as placeholder directions
    (``pc_1`` ...), centred at ``conds_mean``, so that the pipeline still loads; they carry no attribute meaning."""
    conds, m = conds.double(), conds_mean.double().reshape(-1)
    _, _, v = torch.linalg.svd(conds - m, full_matrices=False)
    q = v[:num_axes].T  # (d, k), orthonormal: every subset's basis is its own axes
    return AttributeDirections.from_raw_directions(q, conds, [f"pc_{i + 1}" for i in range(num_axes)], center=m,
                                                   clip_quantile=clip_quantile, method="principal_axes")
