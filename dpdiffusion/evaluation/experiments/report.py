"""The sweep's report: the paper's claims checked, the Markdown tables, ``results.json``, ``results.md`` and plots."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..leakage import dp_accuracy_bound
from .common import _f, _fmt, _jsonable

logger = logging.getLogger(__name__)

__all__ = ["check_claims", "render_markdown", "unmatched_notes", "write_outputs"]


def _row(rows, method, eps):
    for r in rows:
        if r["method"] == method and r["epsilon"] == eps:
            return r
    return None


def check_claims(results: dict, *, epsilon: float = 1.0) -> dict:
    """The paper's claims at ``epsilon`` checked against the results (``None`` where a needed row is missing)."""
    rows, clean = results["rows"], results["clean"]
    ours = _row(rows, "dpdiffusion", epsilon)
    claims: dict = {"epsilon": epsilon}
    if ours is not None and ours["utility"] is not None:
        claims["utility_ratio_min"] = ours["utility"]["min_ratio"]
        claims["utility_ratio_mean"] = ours["utility"]["mean_ratio"]
        claims["utility_at_least_90pct_of_clean"] = bool(ours["utility"]["min_ratio"] >= 0.9)
        plain = ours.get("utility_without_augmentation")
        if plain is not None and plain != ours["utility"]:
            claims["utility_ratio_min_without_augmentation"] = plain["min_ratio"]
            claims["utility_ratio_mean_without_augmentation"] = plain["mean_ratio"]
    if ours is not None:
        bound = dp_accuracy_bound(epsilon, delta=ours["delta"] or 0.0)
        leak = {a: v["accuracy"] for a, v in ours["leakage"]["best"].items()}
        within = {a: ours["leakage"]["best"][a]["within_bound"] for a in leak}
        claims["leakage_bound_balanced"] = bound
        claims["leakage_accuracy"] = leak
        claims["leakage_within_bound"] = bool(all(within.values()))
        if not all(within.values()):
            resid = results.get("residual_leakage", {})
            claims["leakage_explanation"] = (
                "attack accuracy above the bound for " + ", ".join(a for a, w in within.items() if not w)
                + ": the guarantee covers attribute-neighbours (same residual); a non-linear probe reads the attribute "
                "from the untouched residual of clean latents at "
                + ", ".join(f"{a}: {v['residual_mlp_probe']:.1%} (linear {v['residual_linear_probe']:.1%})"
                            for a, v in resid.items())
                + ", i.e. the attribute leaks around the mechanism through r, not through the noised coordinates.")
    for base in ("dp_pix", "dp_pix_attribute", "pixel_gaussian"):
        other = _row(rows, base, epsilon)
        if ours is not None and other is not None and ours["utility"] and other["utility"]:
            gap = 100.0 * (ours["utility"]["mean_accuracy"] - other["utility"]["mean_accuracy"])
            claims[f"utility_gain_vs_{base}_points"] = gap
            claims[f"beats_{base}_by_15_points"] = bool(gap >= 15.0)
    claims.update(_audit_claims(results.get("audit", {})))
    return claims


def _audit_claims(audit: dict) -> dict:
    """Covered audits: none above its claim, and each able to refute it (max certifiable >= 2x the claim)."""
    worst = [{"method": method, "epsilon": _claim_of(v, eps), "audit": kind,
              "epsilon_lower_bound": v["epsilon_lower_bound"], "exceeds": v["exceeds_claim"],
              "max_certifiable_epsilon": v["max_certifiable_epsilon"], "can_refute": _can_refute(v, eps)}
             for method, eps, kind, v in _audit_rows(audit) if v.get("covered_by_claim")]
    if not worst:
        return {}
    weak = [{k: w[k] for k in ("method", "epsilon", "audit", "max_certifiable_epsilon")} for w in worst
            if not w["can_refute"]]
    if weak:
        logger.warning("%d covered audit(s) cannot certify twice their claim and so cannot fail: %s", len(weak),
                       ", ".join(f"{w['method']} {w['audit']} at epsilon {w['epsilon']:g} (max "
                                 f"{w['max_certifiable_epsilon']:.2f})" for w in weak))
    return {"audit_never_exceeds_claim": bool(not any(w["exceeds"] for w in worst)),
            "audit_max_ratio_lower_bound_to_claim": max(w["epsilon_lower_bound"] / w["epsilon"] for w in worst),
            "audit_exceeding": [w for w in worst if w["exceeds"]],
            "audit_all_can_refute_claim": not weak,
            "audit_cannot_refute_claim": weak}


def _table(results: dict) -> list[str]:
    protected = results["config"]["protected"]
    lines = [
        "| method | epsilon | neighbouring relation | leakage: best attack acc. (" + ", ".join(protected)
        + ") | DP bound | utility: mean acc. (clean test) | utility / clean (min) | re-id top-1 | PSNR dB | SSIM "
        "| FD* |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    c = results["clean"]
    cid = c["identity"]["top1"] if c["identity"] else None
    lines.append(f"| clean images | - | - | {c['leakage_accuracy']:.3f} | - | "
                 f"{_f(c['utility_mean_accuracy'])} | 1.000 | {_f(cid)} | inf | 1.000 | 0 |")
    for r in results["rows"]:
        if r["epsilon"] is None:
            eps = f"none (quality of eps={_fmt(r['matched_to_epsilon'])})"
        else:  # epsilon = inf adds no noise: the row is the method switched off, not a protection
            eps = "inf (no noise: no protection)" if math.isinf(r["epsilon"]) else _fmt(r["epsilon"])
        leak = ", ".join(f"{v['accuracy']:.3f}" for v in r["leakage"]["best"].values())
        rel = r["description"]["neighbouring_relation"]
        rel = rel if len(rel) < 60 else rel[:57] + "..."
        u = r["utility"]
        lines.append(
            f"| {r['method']} | {eps} | {rel} | {leak} | {_f(r['leakage_bound'])} | "
            f"{_f(u['mean_accuracy'] if u else None)} | {_f(u['mean_ratio'] if u else None)} "
            f"({_f(u['min_ratio'] if u else None)}) | {_f(r['identity']['top1'] if r['identity'] else None)} | "
            f"{r['quality']['psnr_db']:.2f} | {r['quality']['ssim']:.3f} | "
            f"{r['quality']['fd_synthfaces_resnet']:.2f} |")
    for u in results.get("unmatched_obfuscations", []):
        lines.append(f"| {u['method']} | no setting matches (quality of eps={_fmt(u['matched_to_epsilon'])}) | "
                     "none (no formal guarantee) |" + " - |" * 8)
    return lines


def unmatched_notes(results: dict) -> list[str]:
    """One sentence per obfuscation setting that no strength matches (the table's "no setting matches" rows)."""
    return [f"{u['method']} at the quality of dpdiffusion's eps={_fmt(u['matched_to_epsilon'])}: {u['reason']}; "
            f"its figures would be the clean images', so it has no row of figures."
            for u in results.get("unmatched_obfuscations", [])]


def _claim_of(v: dict, eps_key) -> float:
    """The epsilon an audit row tested (a decoded audit may test a smaller claim than its sweep epsilon)."""
    return float(v["claimed_epsilon"]) if v.get("claimed_epsilon") is not None else float(eps_key)


def _can_refute(v: dict, eps_key) -> bool:
    """``max_certifiable_epsilon >= REFUTATION_FACTOR * claim`` (computed for rows written before the field)."""
    if v.get("can_refute_claim") is not None:
        return bool(v["can_refute_claim"])
    from ..audit import REFUTATION_FACTOR

    return bool(v["max_certifiable_epsilon"] >= REFUTATION_FACTOR * _claim_of(v, eps_key))


def _audit_rows(audit: dict):
    for method, per_eps in audit.items():
        for eps, entry in per_eps.items():
            for kind, v in entry.items():
                if isinstance(v, dict):
                    yield method, eps, kind, v


def _audit_table(audit: dict) -> list[str]:
    lines = ["| method | claimed epsilon | audit (relation) | covered by the claim | eps lower bound (95% CP) | "
             "point estimate | trials/world | max certifiable | can refute the claim (max >= 2x claim) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, eps, kind, v in _audit_rows(audit):
        claim = _fmt(round(_claim_of(v, eps), 6))
        if v.get("requested_epsilon") is not None:
            claim += f" (sweep epsilon {_fmt(v['requested_epsilon'])})"
        lines.append(f"| {method} | {claim} | {kind} | {'yes' if v['covered_by_claim'] else 'no'} | "
                     f"{v['epsilon_lower_bound']:.3f} | {_f(v['epsilon_point'])} | {v['trials_per_world']} | "
                     f"{v['max_certifiable_epsilon']:.2f} | {'yes' if _can_refute(v, eps) else 'NO'} |")
    return lines


def write_outputs(results: dict, samples: dict, out: Path) -> dict:
    """Write ``results.json``, ``results.md`` and the PNGs; returns their paths."""
    from .. import plots

    cmd = results["command"]
    rows = results["rows"]
    files = {}
    files["privacy_utility"] = plots.plot_privacy_utility(
        [r for r in rows if r["utility"]], out / "privacy_utility.png", clean=results["clean"]
        if results["clean"]["utility_mean_accuracy"] is not None else None)
    files["leakage_vs_epsilon"] = plots.plot_vs_epsilon(
        rows, out / "leakage_vs_epsilon.png", key="leakage_accuracy", bound=True,
        reference=results["clean"]["leakage_accuracy"], reference_label="clean images",
        ylabel="best attack accuracy on protected attributes", title="Protected-attribute leakage vs epsilon")
    if any(r["utility"] for r in rows):
        files["utility_vs_epsilon"] = plots.plot_vs_epsilon(
            [r for r in rows if r["utility"]], out / "utility_vs_epsilon.png",
            key=lambda r: r["utility"]["mean_accuracy"], reference=results["clean"]["utility_mean_accuracy"],
            ylabel="mean accuracy on unprotected attributes (clean test)", title="Utility vs epsilon")
    if results["audit"]:
        files["audit"] = plots.plot_audit(results["audit"], out / "audit.png")
    ours = [(f"dpdiffusion eps={_fmt(e)}", s) for (m, e), s in
            ((k, v) for k, v in samples.items() if isinstance(k, tuple)) if m == "dpdiffusion"]
    if ours:
        files["samples_dpdiffusion"] = plots.save_sample_grid([("original", samples["original"])] + ours,
                                                              out / "samples_dpdiffusion.png")
    ref = 1.0 if any(isinstance(k, tuple) and k[1] == 1.0 for k in samples) else None
    if ref is None:
        finite = [k[1] for k in samples if isinstance(k, tuple) and not math.isinf(k[1])]
        ref = min(finite) if finite else math.inf
    per_method = [(f"{m} eps={_fmt(e)}" if m not in ("blur", "pixelate") else f"{m} (quality of eps={_fmt(e)})", s)
                  for (m, e), s in ((k, v) for k, v in samples.items() if isinstance(k, tuple)) if e == ref]
    files["samples_methods"] = plots.save_sample_grid([("original", samples["original"])] + per_method,
                                                      out / "samples_methods.png")
    files = {k: str(v) for k, v in files.items()}
    files["results_json"] = str(out / "results.json")
    files["results_md"] = str(out / "results.md")
    results["files"] = files
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(results) + "\n")
    return files


def render_markdown(results: dict) -> str:
    """The Markdown report: table, claims, audit and figures, each figure with the command that produced it."""
    cfg, cmd = results["config"], results["command"]
    claims = results.get("claims", {})
    lines = [
        "# dpdiffusion: privacy-utility experiments",
        "",
        f"Produced by: `{cmd}`",
        "",
        f"Data: {cfg['source']}; {cfg['num_train']} train / {cfg['num_test']} test images at {cfg['image_size']} px. "
        f"Protected: {', '.join(cfg['protected'])}; utility measured on {', '.join(cfg['unprotected'])}. "
        f"delta = {cfg['delta']:g}; {cfg['num_inference_steps']} DDIM steps; classifiers: small ResNet, "
        f"{cfg['classifier_epochs']} epochs; {results.get('seconds', '?')} s in all.",
        "",
        "Leakage: the better of a ResNet trained and tested on protected images and a logistic probe on the "
        "re-encoded latent (accuracy on the protected test set; majority baseline about 0.5). DP bound: "
        "(e^eps + delta)/(1 + e^eps), the best any attacker can do on a balanced attribute when flipping it is a "
        "neighbour under the method's relation. Utility: a ResNet trained on protected images"
        + (" with flips and colour jitter (as is the clean reference)" if cfg.get("utility_augment") else
           " (the attacker itself)")
        + ", tested on clean images. Re-id: top-1 against the clean test gallery (own original excluded), "
        "features = the pipeline's semantic latent. *FD: " + cfg["fd_feature_space"] + ".",
        "",
        *_table(results),
        "",
        *(line for note in unmatched_notes(results) for line in (note, "")),
        "## Claims at epsilon = 1",
        "",
    ]
    for k, v in claims.items():
        lines.append(f"- `{k}`: {json.dumps(_jsonable(v))}")
    lines += ["", "## Leakage around the mechanism (residual probes on clean latents)", "",
              "| attribute | linear probe on r | MLP probe on r | linear probe on a | linear probe on z |",
              "|---|---|---|---|---|"]
    for a, v in results.get("residual_leakage", {}).items():
        lines.append(f"| {a} | {v['residual_linear_probe']:.3f} | {v['residual_mlp_probe']:.3f} | "
                     f"{v['coordinates_linear_probe']:.3f} | {v['latent_linear_probe']:.3f} |")
    if results.get("audit"):
        lines += ["", "## Empirical privacy audit", "",
                  "Threshold tests on the released output; threshold chosen on one half of the trials, bound "
                  "(two-sided 95% Clopper-Pearson per error rate) on the other half. Rows 'covered by the claim: yes' "
                  "use the method's own neighbouring relation and must stay below the claimed epsilon. 'max "
                  "certifiable' is the bound a perfect attack would reach with the row's trials (the audit's "
                  "resolution); a row can fail only if it is at least twice the claim ('can refute'), and a row "
                  "marked NO is no evidence for its claim. Decoded audits, a decode per trial, test the largest "
                  "claim their trials can refute when the sweep epsilon is above it.", "",
                  *_audit_table(results["audit"])]
    lines += ["", "## Figures", ""]
    captions = {"privacy_utility": "Privacy-utility trade-off", "leakage_vs_epsilon": "Leakage vs epsilon",
                "utility_vs_epsilon": "Utility vs epsilon", "audit": "Empirical epsilon lower bounds",
                "samples_dpdiffusion": "dpdiffusion samples at each epsilon",
                "samples_methods": "All methods at the reference epsilon"}
    for key, caption in captions.items():
        path = results.get("files", {}).get(key)
        if path:
            lines += [f"![{caption}]({Path(path).name})", "", f"{caption}. Command: `{cmd}`", ""]
    return "\n".join(lines)
