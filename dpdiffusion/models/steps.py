"""The DDIM step counts of the entry points, in a module of its own that imports nothing, so that the Space's settings
and the pipeline read the same numbers without importing each other.

``DEFAULT_NUM_INFERENCE_STEPS`` (5): releases decoded from a random stochastic code (the formal guarantee) in the
pipeline's ``__call__`` / ``decode`` / ``invert``, ``protect``, the demo, the Space, the paper sweep and ``evaluate
autoencoder``. ``DEFAULT_INVERSION_STEPS`` (25): releases with ``stochastic_code="inverted"`` (``__call__``,
``decode`` and ``protect`` when no step count is given; inversion and decoding then walk the same 25-step grid) and
the inversion figure of ``evaluate autoencoder``. Both were chosen from the measured trade-off on the embedded default
(README, "Step count"; ``results/step_count/``):

- random codes, 500 held-out faces (``scripts/evaluate_default_model.py --num-images 500 --num-inference-steps 5
  --agreement-steps 10 25 50``): the worst attribute's agreement is 0.962 / 0.970 / 0.966 / 0.968 at 5 / 10 / 25 / 50
  steps (all >= 0.95), the PSNR to the original 20.9 / 20.5 / 20.2 / 20.1 dB (all >= 20), at 0.06 / 0.12 / 0.30 / 0.60
  CPU seconds per image: 5 steps keep as much, look as close and cost a fifth of 25;
- the inversion round trip (100 held-out faces, ``--num-inference-steps K``): 21.7 / 25.6 / 33.6 / 38.9 dB at
  5 / 10 / 25 / 50 steps; 25 is the smallest of these counts at or above the 30 dB target (worst face 30.3 dB).
"""

DEFAULT_NUM_INFERENCE_STEPS = 5
DEFAULT_INVERSION_STEPS = 25


def resolve_num_inference_steps(num_inference_steps, stochastic_code) -> int:
    """`num_inference_steps` when given, else the default of the stochastic code's kind (``"inverted"``:
    ``DEFAULT_INVERSION_STEPS``; ``"random"`` or a given tensor ``x_T``: ``DEFAULT_NUM_INFERENCE_STEPS``).

    Raises:
        ValueError: if a given `num_inference_steps` is not an integer >= 1.
    """
    if num_inference_steps is None:
        inverted = isinstance(stochastic_code, str) and stochastic_code == "inverted"
        return DEFAULT_INVERSION_STEPS if inverted else DEFAULT_NUM_INFERENCE_STEPS
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got "
                         f"num_inference_steps={num_inference_steps!r}")
    return num_inference_steps
