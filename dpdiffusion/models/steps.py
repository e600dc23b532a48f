"""``DEFAULT_NUM_INFERENCE_STEPS``: the DDIM step count of every entry point (the pipeline's ``__call__`` / ``decode`` /
``invert``, ``protect``, the demo, the Space, ``evaluate autoencoder``). A module of its own, importing nothing, so that
the Space's settings and the pipeline read one number without importing each other.
"""

# the DDIM steps of every entry point (the pipeline's __call__/decode/invert, `protect`, the demo, the Space,
# `evaluate autoencoder`), chosen from the measured trade-off on the embedded default (README, "Step count":
# `scripts/evaluate_default_model.py --num-images 100 --num-inference-steps 25 --agreement-steps 5 10 20 50 --seed 99`,
# results/step_count/default_unet2d_steps.json):
# with random stochastic codes 5 steps kept every attribute best (min agreement 0.94 against 0.91 / 0.88 / 0.88 / 0.81
# at 10 / 20 / 25 / 50), decoded closest to the original (11.2 dB PSNR against 7.7 dB at 50) and cost a tenth of 50
# steps (0.09 CPU s per image against 0.93); the inversion round trip loses 1.2 dB (29.1 against 30.3 dB at 25)
DEFAULT_NUM_INFERENCE_STEPS = 5
