"""Matched-quality obfuscations that cannot be matched are said to be so (not listed as the clean images), and a
method at epsilon = inf is no protection in its description."""

from __future__ import annotations

import math

import pytest
import torch

from dpdiffusion.evaluation.baselines import (BlurMethod, DPPixMethod, PixelGaussianMethod, match_obfuscation,
                                              match_quality, pixelate, quantize)
from dpdiffusion.evaluation.experiments.report import _table, unmatched_notes
from dpdiffusion.evaluation.quality import psnr


def _images(seed=0, n=4):
    # 8-bit images (what the sweep evaluates), so that "unchanged" is exact
    return quantize(torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))


def _contrast(x):  # (N, 3): per-channel standard deviation, a feature every pixelation lowers
    return x.std(dim=(2, 3)).double().numpy()


def test_a_target_only_the_identity_reaches_is_no_setting_matches():
    # the sweep's protocol: Frechet distance of features to the clean images'; the identity has distance 0, so a
    # target nearer 0 than the mildest real pixelation is "matched" only by the clean images themselves
    x = _images(n=32)
    fd = dict(metric="fd", feature_fn=_contrast, reference_features=_contrast(x))
    _, fd_two = match_quality(x, 1e9, "pixelate", candidates=[2], **fd)
    match = match_obfuscation(x, 0.1 * fd_two, "pixelate", **fd)
    assert not match.matched and match.parameter is None and match.nearest_parameter == 1.0
    assert match.reason.startswith("no pixelate setting matches") and "cell size 1" in match.reason
    # match_quality still answers with the nearest setting (the identity): the case match_obfuscation flags
    assert match_quality(x, 0.1 * fd_two, "pixelate", **fd)[0] == 1.0
    assert match_obfuscation(x, 0.9 * fd_two, "pixelate", **fd).parameter == 2.0


def test_a_reachable_target_matches_as_before():
    x = _images(1)
    two = float(psnr(quantize(pixelate(x, 2)), x).mean())
    match = match_obfuscation(x, two - 0.01, "pixelate")
    assert match.matched and match.parameter == 2.0 and match.achieved == pytest.approx(two)
    assert (match.parameter, match.achieved) == match_quality(x, two - 0.01, "pixelate")
    blur = match_obfuscation(x, 20.0, "blur")
    assert blur.matched and blur.parameter > 0 and blur.reason is None
    with pytest.raises(ValueError, match="method must be"):
        match_obfuscation(x, 20.0, "jpeg")


def test_unmatched_setting_renders_as_no_setting_matches_without_figures():
    results = {"config": {"protected": ["dark_skin"]}, "rows": [],
               "clean": {"leakage_accuracy": 0.9, "utility_mean_accuracy": 0.8, "identity": None},
               "unmatched_obfuscations": [{"method": "pixelate", "matched_to_epsilon": math.inf,
                                           "reason": "no pixelate setting matches: ..."}]}
    lines = _table(results)
    assert lines[-1] == ("| pixelate | no setting matches (quality of eps=inf) | none (no formal guarantee) |"
                         + " - |" * 8)
    assert len(lines[-1].split("|")) == len(lines[0].split("|"))  # as many cells as the header
    assert unmatched_notes(results) == ["pixelate at the quality of dpdiffusion's eps=inf: no pixelate setting "
                                        "matches: ...; its figures would be the clean images', so it has no row of "
                                        "figures."]


def test_epsilon_inf_is_no_protection_in_a_methods_description():
    for method in (DPPixMethod(name="dp_pix", neighbouring_relation="m-neighbours"),
                   PixelGaussianMethod(name="pixel_gaussian", neighbouring_relation="L2 <= Delta")):
        assert method.describe(1.0)["guarantee"] == "formal"
        assert method.describe(math.inf)["guarantee"] == "none (epsilon = inf)"
    assert BlurMethod(name="blur", neighbouring_relation="none", formal=False).describe(math.inf)["guarantee"] == "none"
