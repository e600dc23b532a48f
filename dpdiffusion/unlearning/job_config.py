"""The options of ``dpdiffusion unlearn`` (torch-free, so that ``dpdiffusion unlearn --help`` answers at once)."""

from __future__ import annotations

from dataclasses import dataclass, field

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class UnlearnConfig:
    """Options of ``dpdiffusion unlearn``."""

    classifier: str = field(metadata={"help": "transformers AutoModelForImageClassification: folder or Hub repo id "
                                              "(its AutoImageProcessor is used for preprocessing)."})
    original: str = field(metadata={"help": "Original training images (image folder with metadata, save_to_disk folder or Hub dataset)."})
    revised: str = field(metadata={"help": "Output folder of `dpdiffusion protect` on those images."})
    output_dir: str = field(metadata={"help": "Where the unlearned model, its processor and model card are written."})
    label_columns: list[str] | None = field(default=None, metadata={
        "help": "Multi-label: one 0/1 column per output of the classifier, named as in its id2label."})
    label_column: str | None = field(default=None, metadata={
        "help": "Single-label: the column of class names (the classifier's label2id) or integer ids."})
    method: str = field(default="second_order", metadata={
        "help": "first_order, second_order, head_exact (exact retraining of the linear head on frozen features), "
                "finetune or retrain."})
    head_l2: float = field(default=1e-3, metadata={"help": "L2 penalty of the head objective of --method head_exact (> 0)."})
    image_column: str = field(default="image", metadata={"help": "Image column of the original dataset."})
    image_size: int | None = field(default=None, metadata={
        "help": "Input size for a classifier WITHOUT an image processor (then: centre crop, bicubic resize, [-1, 1]); "
                "ignored when the classifier has a preprocessor_config.json."})
    last_k_blocks: int | None = field(default=None, metadata={
        "help": "Update only the classifier head and the last k blocks (0: the head only); default: all parameters."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (Accelerate autocast)."})
    batch_size: int = field(default=32, metadata={"help": "Images per batch of gradient sums and HVPs."})
    hessian_samples: int = field(default=256, metadata={"help": "Training rows on which the Hessian is estimated."})
    step_search: str = field(default="held_out", metadata={
        "help": "first/second order: held_out (the update's length chosen on a fifth of the changed pairs, held out), "
                "training_loss (chosen on an estimate of the revised training loss: shorter, keeps more accuracy on "
                "unchanged data, removes less) or quadratic (the local quadratic model's length)."})
    epochs: int = field(default=10, metadata={"help": "Epochs of finetune/retrain (and of --compare-retrain)."})
    retrain_lr: float = field(default=3e-3, metadata={
        "help": "AdamW learning rate of --method retrain and --compare-retrain (cosine decay; > 0)."})
    retrain_weight_decay: float = field(default=1e-4, metadata={
        "help": "AdamW weight decay of the retraining (>= 0)."})
    retrain_warmup_ratio: float = field(default=0.0, metadata={
        "help": "Share of the retraining steps spent on a linear warm-up, in [0, 1) (a ViT trained from scratch "
                "wants one: the ViT benchmark uses lr 1e-3, weight decay 0.05, warm-up 0.1)."})
    compare_retrain: bool = field(default=False, metadata={
        "help": "Also retrain from scratch: agreement with it, cost ratio, and (with --held-out) membership inference."})
    held_out: str | None = field(default=None, metadata={
        "help": "Held-out images with the same label column(s), never trained on: the non-members of the "
                "membership-inference AUC (with --compare-retrain)."})
    shifted_test: str | None = field(default=None, metadata={
        "help": "Held-out images with the same label column(s) on which the correlation to unlearn is reversed "
                "(e.g. dpdiffusion.evaluation.unlearning_shift.reversed_correlation_split rendered to a folder): "
                "accuracy there before and after; with --compare-retrain, the retrained model's and the share of "
                "the gap restored."})
    dataset_ids: list[str] | None = field(default=None, metadata={
        "help": "Hub dataset ids listed under `datasets` in the card (default: --original/--revised if they are Hub ids)."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Upload the result to this Hub repo id (needs a token)."})
    seed: int = field(default=0, metadata={"help": "Seed."})
