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
