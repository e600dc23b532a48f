"""The options of ``dpdiffusion train`` (torch-free, so that ``dpdiffusion train --help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AutoencoderTrainingConfig:
    """Options of ``train_autoencoder`` (also the ``dpdiffusion train`` CLI)."""

    output_dir: str = field(metadata={"help": "Where checkpoints and the final pipeline (output_dir/model) go."})
    dataset: str = field(default="synthfaces", metadata={"help": "'synthfaces', a Hub dataset name, an image folder with metadata, or a save_to_disk folder."})
    image_column: str = field(default="image", metadata={"help": "Image column of a real dataset."})
    attribute_columns: list[str] | None = field(default=None, metadata={"help": "Attribute columns (protected ones first); SynthFaces' five by default."})
    num_images: int = field(default=10000, metadata={"help": "SynthFaces images to generate (ignored for real datasets)."})
    image_size: int = field(default=32, metadata={"help": "Training resolution in pixels."})
    latent_dim: int = field(default=64, metadata={"help": "Dimension d of the semantic latent."})
    unet_type: str = field(default="unet2d", metadata={"help": "'unet2d' (UNet2DModel, z added to the time "
                           "embedding) or 'diffae' (DiffAE AdaGN: z multiplies every residual block; linear schedule)."})
    prediction_type: str = field(default="epsilon", metadata={"help": "What the UNet predicts: 'epsilon' (the noise) "
                                 "or 'v_prediction' (v = sqrt(abar) eps - sqrt(1 - abar) x0; with --unet_type diffae "
                                 "only)."})
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64], metadata={"help": "UNet block widths."})
    encoder_channels: list[int] = field(default_factory=lambda: [32, 64, 128], metadata={"help": "Encoder block widths."})
    batch_size: int = field(default=64, metadata={"help": "Per-process batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    max_steps: int = field(default=6000, metadata={"help": "Optimisation steps."})
    max_minutes: float | None = field(default=None, metadata={"help": "Stop (and checkpoint) after this many minutes."})
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps."})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay of the weights that are saved."})
    attribute_loss_weight: float = field(default=0.1, metadata={"help": "Weight of the auxiliary attribute loss on z."})
    checkpoint_every: int = field(default=500, metadata={"help": "Steps between checkpoints."})
    clip_quantile: float = field(default=0.95, metadata={"help": "Quantile of |a_i| used as the public clip bound."})
    seed: int = field(default=0, metadata={"help": "Seed of data, initialisation and noise."})
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' or 'bf16' (Accelerate)."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    init_from: str | None = field(default=None, metadata={"help": "A pipeline folder saved by this trainer (e.g. an "
                                  "embedded model) whose encoder and UNet weights start a fresh run (new optimiser, "
                                  "schedule and attribute heads); its architecture must match these options. Ignored "
                                  "when the run resumes from its own checkpoint."})
