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
