import yaml

from dpdiffusion import DPDiffusionPipeline
from dpdiffusion.models.default import render_pipeline_card


def test_pipeline_card_figures_come_from_the_saved_model(dummy_components, tmp_path):
    DPDiffusionPipeline(**dummy_components).save_pretrained(tmp_path)
    text = render_pipeline_card(tmp_path, command="python scripts/train_default_models.py --x 1",
                                training_state={"step": 7})
    front = yaml.safe_load(text.split("---")[1])
    dirs = dummy_components["attribute_directions"]
    assert front["clip_bounds"] == dirs.clip_bounds
    assert front["privacy"]["basis"].startswith("per release, the span of the protected attributes' raw directions")
    assert "C_i protected alone" in text and f"coordinates of {dirs.config.fit_sample_size} public fit-set" in text
    assert front["attribute_names"] == list(dirs.names)
    assert front["training_command"] == "python scripts/train_default_models.py --x 1"
    assert "## What is protected" in text and "## What is not protected" in text
    assert "7 optimisation steps" in text
    assert "a `SemanticEncoder` (image -> 8-d" in text and "`UNet2DModel` decoder conditioned on z" in text


def test_pipeline_card_names_the_diffae_decoder(dummy_components, tmp_path):
    from dpdiffusion.models.diffae import build_diffae_scheduler, build_diffae_unet

    parts = dict(dummy_components, unet=build_diffae_unet(sample_size=16, block_out_channels=(8, 16)),
                 scheduler=build_diffae_scheduler())
    DPDiffusionPipeline(**parts).save_pretrained(tmp_path)
    text = render_pipeline_card(tmp_path, command="python scripts/train_default_models.py --unet_type diffae")
    assert "`DiffAEUNet2DModel` decoder (the DiffAE architecture" in text and "UNet2DModel` decoder conditioned" not in text


def test_install_writes_the_named_embedded_model_and_load_pipeline_finds_it(dummy_components, tmp_path, monkeypatch):
    """`install_default_model(name="unet2d")` fills UNET2D_MODEL (not DEFAULT_MODEL), safetensors only, with the
    card; `load_pipeline("unet2d")` then loads it, and says how to make it when it is missing."""
    import pytest

    from dpdiffusion.models import default

    src = tmp_path / "trained"
    DPDiffusionPipeline(**dummy_components).save_pretrained(src)
    (src / "unet" / "stray.bin").write_bytes(b"pickle")
    models = {name: (str(tmp_path / f"{name}_model"), *rest) for name, (_, *rest) in default.EMBEDDED_MODELS.items()}
    monkeypatch.setattr(default, "EMBEDDED_MODELS", models)
    with pytest.raises(ValueError, match="embedded UNET2D_MODEL model is not installed"):
        default.load_pipeline("unet2d")
    target = default.install_default_model(src, command="python scripts/train_default_models.py --install_as unet2d",
                                           name="unet2d")
    assert str(target) == models["unet2d"][0] and not (tmp_path / "default_model").exists()
    card = (target / "README.md").read_text()
    assert not list(target.rglob("*.bin")) and "--install_as unet2d" in card
    assert "from_pretrained(UNET2D_MODEL)" in card and "DEFAULT_MODEL" not in card and "not the default" in card
    pipe = default.load_pipeline("unet2d")
    assert pipe.attribute_directions.names == dummy_components["attribute_directions"].names
    with pytest.raises(ValueError, match="name must be one of"):
        default.install_default_model(src, command="x", name="other")


def test_train_default_models_refuses_an_unknown_install_target_before_training():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "train_default_models.py"
    res = subprocess.run([sys.executable, str(script), "--output_dir", "/nonexistent/never-made", "--install",
                          "--install_as", "other"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "--install_as must be one of ['default', 'unet2d']" in res.stderr
    assert not Path("/nonexistent/never-made").exists()


def test_refresh_model_card_keeps_the_commands_and_adds_the_evaluation(dummy_components, tmp_path, monkeypatch):
    import pytest

    from dpdiffusion.models import default

    src = tmp_path / "trained"
    DPDiffusionPipeline(**dummy_components).save_pretrained(src)
    models = {name: (str(tmp_path / f"{name}_model"), *rest) for name, (_, *rest) in default.EMBEDDED_MODELS.items()}
    monkeypatch.setattr(default, "EMBEDDED_MODELS", models)
    with pytest.raises(ValueError, match="UNET2D_MODEL model is not installed"):
        default.refresh_model_card("unet2d")
    target = default.install_default_model(src, command="python scripts/train_default_models.py --a\n"
                                           "python scripts/train_default_models.py --b", name="default")
    weights = sorted((p.name, p.read_bytes()) for p in target.rglob("*.safetensors"))
    card = default.refresh_model_card("default", evaluation={"random_code_psnr_db": 21.5},
                                      evaluation_command="python scripts/evaluate_default_model.py --card").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["training_command"] == "python scripts/train_default_models.py --a\npython scripts/train_default_models.py --b"
    assert '"random_code_psnr_db": 21.5' in card and "python scripts/evaluate_default_model.py --card" in card
    assert "from_pretrained(DEFAULT_MODEL)" in card
    assert sorted((p.name, p.read_bytes()) for p in target.rglob("*.safetensors")) == weights
    with pytest.raises(ValueError, match="name must be one of"):
        default.refresh_model_card("other")


def test_embedded_model_name_reads_names_and_constants_only():
    from dpdiffusion.models.default import DEFAULT_MODEL, embedded_model_name

    assert [embedded_model_name(m) for m in (None, "default", "DEFAULT_MODEL", "unet2d", "UNET2D_MODEL")] == \
        ["default", "default", "default", "unet2d", "unet2d"]
    assert embedded_model_name(DEFAULT_MODEL) is None and embedded_model_name("me/dp-pipeline") is None
