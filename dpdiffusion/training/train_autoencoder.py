"""Train the diffusion autoencoder (semantic encoder + conditional UNet) and fit the attribute directions.

Runs with Accelerate: on the CPU here, unchanged under ``accelerate launch`` on several GPUs (data-parallel; the
loader is sharded by ``accelerator.prepare``). Checkpoints are written atomically every ``checkpoint_every`` steps
(and when ``max_minutes`` runs out); a rerun with the same ``output_dir`` resumes from the newest one.

Objective: the DDPM epsilon loss with the UNet conditioned on ``z = Enc(x_0)`` (DiffAE), plus a small auxiliary
logistic loss of linear attribute heads on ``z`` (``attribute_loss_weight``) so that the labelled attributes are
linearly readable from ``z`` -- the premise of ``AttributeDirections``. The heads are training-only.

Two decoders (``unet_type``): ``"unet2d"``, diffusers' ``UNet2DModel`` with ``z`` added to the timestep embedding
(``class_embed_type="identity"``, cosine schedule); ``"diffae"``, the DiffAE architecture (``DiffAEUNet2DModel``:
timestep AdaGN and the semantic condition multiplying every residual block, Preechakul et al. 2022, Eq. 7) on the
official linear schedule, sampled by the official respaced DDIM with ``x0`` clipping. Both use ``SemanticEncoder``;
``unet_channels`` gives the widths of either (``model_channels = unet_channels[0]``, ``channel_mult`` the ratios).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..models.attribute_directions import AttributeDirections
from ..models.diffae import _is_official, build_diffae_scheduler, build_diffae_unet, build_scheduler, build_unet
from ..models.semantic_encoder import SemanticEncoder
from ..models.training_domain import dataset_domain

logger = logging.getLogger(__name__)


from .config import AutoencoderTrainingConfig  # noqa: E402,F401  (re-exported: the trainer's options)


def load_training_tensors(config: AutoencoderTrainingConfig) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images ``(N, 3, H, W)`` uint8 and labels ``(N, K)`` float for the configured dataset."""
    from ..data.synthfaces import SYNTHFACES_ATTRIBUTES, make_synthfaces_arrays

    if config.dataset == "synthfaces":
        names = list(config.attribute_columns or SYNTHFACES_ATTRIBUTES)
        images, params = make_synthfaces_arrays(config.num_images, image_size=config.image_size, seed=config.seed)
        unknown = [n for n in names if n not in SYNTHFACES_ATTRIBUTES]
        if unknown:
            raise ValueError(f"attribute_columns {unknown} are not SynthFaces attributes {list(SYNTHFACES_ATTRIBUTES)}")
        labels = torch.stack([torch.as_tensor(params[n], dtype=torch.float32) for n in names], 1)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, names
    from ..data.attributes import dataset_to_tensors, load_attribute_dataset

    if not config.attribute_columns:
        raise ValueError("attribute_columns must be given for a dataset other than 'synthfaces'")
    ds = load_attribute_dataset(config.dataset, image_column=config.image_column, attribute_columns=config.attribute_columns)
    images, labels = dataset_to_tensors(ds, image_size=config.image_size, image_column=config.image_column,
                                        attribute_columns=config.attribute_columns)
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images, labels.float(), list(config.attribute_columns)


def _to_model_range(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]


class _Trainable(torch.nn.Module):
    """Encoder, UNet and the training-only attribute heads as one module (one optimiser, one DDP wrapper)."""

    def __init__(self, encoder: SemanticEncoder, unet, num_attributes: int):
        super().__init__()
        self.encoder = encoder
        self.unet = unet
        self.heads = torch.nn.Linear(encoder.config.latent_dim, num_attributes)

    def forward(self, x0, noise, timesteps, alphas_cumprod):
        z = self.encoder(x0)
        abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        cond = self.encoder.condition(z)
        if _is_official(self.unet):  # DiffAEUNet2DModel: the condition multiplies every residual block
            eps = self.unet(x_t, timesteps, cond=cond).sample
        else:
            eps = self.unet(x_t, timesteps, class_labels=cond).sample
        return eps, self.heads(z)


def _target(prediction_type: str, x0, noise, timesteps, alphas_cumprod) -> torch.Tensor:
    """The regression target: the noise, or ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022), which
    at high noise asks for the image itself, so that the decoder must read it from ``z`` early in training."""
    if prediction_type == "epsilon":
        return noise
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0  # (B, C, H, W)


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted((p for p in ckpt_root.glob("step-*") if (p / "trainer_state.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def train_autoencoder(config: AutoencoderTrainingConfig):
    """Train, checkpoint, resume; at the end fit ``AttributeDirections`` and save a ``DPDiffusionPipeline``.

    Returns:
        `pathlib.Path`: the folder of the saved pipeline (``output_dir/model``).
    """
    from accelerate.utils import set_seed

    from ..utils_accelerate import make_accelerator

    if config.batch_size < 1 or config.max_steps < 1:
        raise ValueError(f"batch_size and max_steps must be >= 1, got {config.batch_size} and {config.max_steps}")
    if config.unet_type not in ("unet2d", "diffae"):
        raise ValueError(f"unet_type must be 'unet2d' or 'diffae', got unet_type={config.unet_type!r}")
    if config.prediction_type not in ("epsilon", "v_prediction") or (
            config.prediction_type == "v_prediction" and config.unet_type != "diffae"):
        raise ValueError(f"prediction_type must be 'epsilon', or 'v_prediction' with unet_type='diffae', got "
                         f"prediction_type={config.prediction_type!r} with unet_type={config.unet_type!r}")
    out = Path(config.output_dir)
    ckpt_root = out / "checkpoints"
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    set_seed(config.seed)
    images, labels, names = load_training_tensors(config)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "training_config.json").write_text(json.dumps(asdict(config), indent=2, default=list))

    model, scheduler = _build_model(config, len(names))
    if config.init_from is not None and _latest_checkpoint(ckpt_root) is None:
        _load_pipeline_weights(model, config.init_from)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config=config))
    loader = DataLoader(TensorDataset(images, labels), batch_size=config.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    accelerator.register_for_checkpointing(ema)

    step = 0
    latest = _latest_checkpoint(ckpt_root)
    if latest is not None:
        accelerator.load_state(str(latest))
        step = json.loads((latest / "trainer_state.json").read_text())["step"]
        logger.info("resumed from %s at step %d", latest, step)

    alphas_cumprod = scheduler.alphas_cumprod.to(accelerator.device)
    num_t = scheduler.config.num_train_timesteps
    started = time.monotonic()
    bar = tqdm(total=config.max_steps, initial=step, desc="train autoencoder",
               disable=not (config.progress and accelerator.is_local_main_process))
    noise_gen = torch.Generator(device="cpu").manual_seed(config.seed + 1000 * (step + 1) + accelerator.process_index)

    stop = False
    while step < config.max_steps and not stop:
        for x_u8, y in loader:
            x0 = _to_model_range(x_u8)
            noise = torch.randn(x0.shape, generator=noise_gen).to(x0.device)
            t = torch.randint(0, num_t, (x0.shape[0],), generator=noise_gen).to(x0.device)
            with accelerator.autocast():
                eps, logits = model(x0, noise, t, alphas_cumprod)
                loss_eps = F.mse_loss(eps.float(), _target(config.prediction_type, x0, noise, t, alphas_cumprod))
                loss_attr = F.binary_cross_entropy_with_logits(logits.float(), y)
                loss = loss_eps + config.attribute_loss_weight * loss_attr
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                src = list(accelerator.unwrap_model(model).parameters())
                torch._foreach_lerp_(list(ema.parameters()), src, 1 - decay)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_eps.item():.4f}", attr=f"{loss_attr.item():.3f}")
            out_of_time = config.max_minutes is not None and (time.monotonic() - started) > 60 * config.max_minutes
            if step % config.checkpoint_every == 0 or step >= config.max_steps or out_of_time:
                _save_checkpoint(accelerator, ckpt_root, step)
            if step >= config.max_steps or out_of_time:
                stop = True
                break
    bar.close()

    model_dir = out / "model"
    if accelerator.is_main_process:
        _save_pipeline(model_dir, ema, scheduler, images, labels, names, step=step,
                       clip_quantile=config.clip_quantile,
                       training_domain=dataset_domain(config.dataset, config.image_size))
    accelerator.wait_for_everyone()
    return model_dir


def export_checkpoint(output_dir: str | Path, *, checkpoint: str | Path | None = None,
                      model_dir: str | Path | None = None) -> Path:
    """Save the EMA weights of a training checkpoint as a pipeline (directions fitted as at the end of training),
    without touching the run: to evaluate a run that is still training, or one stopped before its end.

    Args:
        output_dir: the run's ``output_dir`` (its ``training_config.json`` rebuilds the model and the fit set).
        checkpoint (*optional*): a ``checkpoints/step-N`` folder (default: the newest complete one).
        model_dir (*optional*): where the pipeline goes (default ``output_dir/export-step-N``).

    Returns:
        `pathlib.Path`: the pipeline folder (its ``training_state.json`` holds the checkpoint's step).

    Raises:
        ValueError: if ``output_dir`` has no training config or no complete checkpoint.
    """
    out = Path(output_dir)
    if not (out / "training_config.json").is_file():
        raise ValueError(f"output_dir must be a training run with training_config.json, got output_dir={str(out)!r}")
    config = AutoencoderTrainingConfig(**json.loads((out / "training_config.json").read_text()))
    ckpt = Path(checkpoint) if checkpoint is not None else _latest_checkpoint(out / "checkpoints")
    if ckpt is None or not (ckpt / "trainer_state.json").is_file() or not (ckpt / "custom_checkpoint_0.pkl").is_file():
        raise ValueError(f"checkpoint must be a complete checkpoints/step-N folder of {out}, got {ckpt}")
    step = json.loads((ckpt / "trainer_state.json").read_text())["step"]
    images, labels, names = load_training_tensors(config)
    ema, scheduler = _build_model(config, len(names))
    # the EMA is the run's first registered custom object (accelerator.register_for_checkpointing(ema)): a plain
    # state dict of tensors, loaded without unpickling arbitrary objects
    ema.load_state_dict(torch.load(ckpt / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=True))
    target = Path(model_dir) if model_dir is not None else out / f"export-step-{step}"
    _save_pipeline(target, ema.requires_grad_(False), scheduler, images, labels, names, step=step,
                   clip_quantile=config.clip_quantile,
                   training_domain=dataset_domain(config.dataset, config.image_size))
    return target


def _build_model(config: AutoencoderTrainingConfig, num_attributes: int):
    """The trainable encoder + UNet (+ attribute heads) and the DDIM scheduler of ``config``."""
    encoder = SemanticEncoder(sample_size=config.image_size, latent_dim=config.latent_dim,
                              block_out_channels=tuple(config.encoder_channels),
                              condition_dim=4 * config.unet_channels[0])
    if config.unet_type == "diffae":
        unet = build_diffae_unet(sample_size=config.image_size, block_out_channels=tuple(config.unet_channels))
        scheduler = build_diffae_scheduler(prediction_type=config.prediction_type)
    else:
        unet = build_unet(sample_size=config.image_size, block_out_channels=tuple(config.unet_channels))
        scheduler = build_scheduler()
    return _Trainable(encoder, unet, num_attributes), scheduler


def _load_pipeline_weights(model: _Trainable, folder: str | Path) -> None:
    """Load the encoder and UNet weights of the pipeline folder `folder` into `model` (strictly: same architecture).

    Raises:
        ValueError: if `folder` has no encoder/UNet safetensors weights or they do not fit `model`.
    """
    from safetensors.torch import load_file

    for part in ("encoder", "unet"):
        weights = Path(folder) / part / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise ValueError(f"init_from must be a pipeline folder with {part}/diffusion_pytorch_model.safetensors, "
                             f"got init_from={str(folder)!r}")
        try:
            getattr(model, part).load_state_dict(load_file(weights), strict=True)
        except RuntimeError as err:
            raise ValueError(f"init_from={str(folder)!r}: its {part} does not match the configured architecture "
                             f"({err})") from err


def _lr_factor(step: int, *, config: AutoencoderTrainingConfig) -> float:
    """Linear warm-up from ``1 / warmup_steps``, then cosine decay to 5 % of the learning rate.

    Hand-written: transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` warms up from 0 (``step / warmup``,
    not ``(step + 1) / warmup``), which would change the trained default model.
    """
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _save_checkpoint(accelerator, ckpt_root: Path, step: int) -> None:
    """Save the Accelerate state at ``step`` atomically (a checkpoint exists whole or not at all); keep the last 2."""
    accelerator.wait_for_everyone()
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a checkpoint exists whole or not at all
        for old in sorted(ckpt_root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_pipeline(model_dir: Path, ema, scheduler, images, labels, names, *, step: int,
                   clip_quantile: float, training_domain=None) -> None:
    """Fit the attribute directions on the EMA encoder and save the pipeline to ``model_dir`` atomically, declaring
    ``training_domain`` (`dpdiffusion.models.training_domain.dataset_domain` of the run's dataset)."""
    from ..pipeline_dp_diffusion import DPDiffusionPipeline

    directions = fit_directions(ema.encoder, images, labels, names, clip_quantile=clip_quantile)
    pipe = DPDiffusionPipeline(unet=ema.unet, encoder=ema.encoder, scheduler=scheduler,
                               attribute_directions=directions, training_domain=training_domain)
    tmp = model_dir.parent / f".tmp-{model_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training_state.json").write_text(json.dumps({"step": step, "attribute_names": names}))
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)


@torch.no_grad()
def encode_all(encoder: SemanticEncoder, images_uint8: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Latents ``(N, d)`` of uint8 images ``(N, 3, H, W)``."""
    encoder.eval()
    return torch.cat([encoder(_to_model_range(images_uint8[i:i + batch_size]))
                      for i in range(0, len(images_uint8), batch_size)])


def fit_directions(encoder, images_uint8, labels, names, *, clip_quantile: float = 0.95) -> AttributeDirections:
    """Fit ``AttributeDirections`` (mean-difference probes + QR) on the latents of the training images."""
    return AttributeDirections.fit(encode_all(encoder, images_uint8), labels, names, clip_quantile=clip_quantile)
