#!/usr/bin/env python
"""Train the embedded default diffusion autoencoder on SynthFaces and install it into the package.

    python scripts/train_default_models.py --output_dir runs/default --unet_type diffae \
        --prediction_type v_prediction --max_steps 10000 --install

Every option of ``AutoencoderTrainingConfig`` is a flag (``--help`` lists them). Rerunning with the same
``--output_dir`` resumes from the newest checkpoint. ``--install`` copies ``output_dir/model`` to
``dpdiffusion/default_model`` (the ``DEFAULT_MODEL``) and writes its model card with this exact command.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from dpdiffusion.training.train_autoencoder import AutoencoderTrainingConfig, train_autoencoder


@dataclass
class InstallArguments:
    install: bool = field(default=False, metadata={"help": "Install the result as dpdiffusion's DEFAULT_MODEL."})
    install_as: str = field(default="default", metadata={
        "help": "Which embedded model --install replaces: default (DEFAULT_MODEL) or unet2d (UNET2D_MODEL, the "
                "former default's UNet2DModel, not the default)."})
    earlier_commands: list[str] = field(default_factory=list, metadata={
        "help": "Earlier runs of the same --output_dir that this one resumed from (recorded first in the model card, "
                "so that the card holds the whole recipe; the learning-rate schedule follows --max_steps of each run)."})


def main(argv=None) -> int:
    parser = HfArgumentParser((AutoencoderTrainingConfig, InstallArguments))
    config, install = parser.parse_args_into_dataclasses(args=argv)
    from dpdiffusion.models.default import EMBEDDED_MODELS

    if install.install_as not in EMBEDDED_MODELS:  # before hours of training, not after
        raise SystemExit(f"--install_as must be one of {sorted(EMBEDDED_MODELS)}, got {install.install_as!r}")
    model_dir = train_autoencoder(config)
    print(f"pipeline saved to {model_dir}")
    if install.install:
        from dpdiffusion.models.default import install_default_model

        args = list(argv or sys.argv[1:])
        if "--earlier_commands" in args:  # record the earlier runs as their own lines, not as this run's flags
            i = args.index("--earlier_commands")
            j = next((k for k in range(i + 1, len(args)) if args[k].startswith("--")), len(args))
            args = args[:i] + args[j:]
        command = "\n".join([*install.earlier_commands,
                              "python scripts/train_default_models.py " + " ".join(shlex.quote(a) for a in args)])
        target = install_default_model(model_dir, command=command, name=install.install_as)
        print(f"installed as the embedded {install.install_as!r} model at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
