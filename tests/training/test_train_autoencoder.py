"""train_autoencoder with the DiffAE decoder (``unet_type="diffae"``): trains, checkpoints, resumes, and saves a
pipeline whose every stage works; the builder's checks and its zero-initialised outputs."""

import json

import numpy as np
import pytest
import torch

from dpdiffusion.models.diffae import build_diffae_scheduler, build_diffae_unet
from dpdiffusion.models.diffae_unet import DiffAEUNet2DModel
from dpdiffusion.training.train_autoencoder import AutoencoderTrainingConfig, train_autoencoder


def _config(tmp_path, **kw):
    return AutoencoderTrainingConfig(output_dir=str(tmp_path / "run"), unet_type="diffae", num_images=64,
                                     image_size=16, latent_dim=8, unet_channels=[8, 16], encoder_channels=[8, 16],
                                     batch_size=16, checkpoint_every=2, progress=False, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diffae-train")
    torch.set_num_threads(1)
    train_autoencoder(_config(tmp, max_steps=2))
    return tmp, train_autoencoder(_config(tmp, max_steps=3))  # resumes from step-2


def test_diffae_training_resumes_from_its_checkpoint(trained):
    tmp, model_dir = trained
    assert json.loads((model_dir / "training_state.json").read_text())["step"] == 3
    assert sorted(p.name for p in (tmp / "run" / "checkpoints").iterdir()) == ["step-2", "step-3"]
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["unet"] == ["dpdiffusion.models.diffae_unet", "DiffAEUNet2DModel"]


def test_diffae_pipeline_stages_work_without_guidance(trained):
    from dpdiffusion.models.default import load_pipeline

    pipe = load_pipeline(str(trained[1]))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, DiffAEUNet2DModel) and pipe.scheduler.config.beta_schedule == "linear"
    assert pipe._guidance(None, "random") == 1.0  # no semantic guidance for this architecture
    assert pipe.attribute_directions.config.coordinate_prior  # posterior_mean has its public prior
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = pipe(x, attributes=["dark_skin"], epsilon=float("inf"), delta=1e-5, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np")
    plain = pipe.decode(pipe.encode(x), num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                        output_type="np")
    np.testing.assert_array_equal(out.images, plain)
    noisy = pipe(x, attributes=["dark_skin"], epsilon=1.0, delta=1e-5, num_inference_steps=2,
                 post_processing="posterior_mean", generator=torch.Generator().manual_seed(0), output_type="np")
    assert noisy.images.shape == (2, 16, 16, 3) and noisy.guarantee == "formal"
    inverted = pipe(x, attributes=["dark_skin"], epsilon=1.0, delta=1e-5, num_inference_steps=2,
                    stochastic_code="inverted", output_type="np")
    assert inverted.guarantee == "heuristic"


def test_export_checkpoint_saves_that_steps_ema_as_a_pipeline(trained, tmp_path):
    from dpdiffusion.models.default import load_pipeline
    from dpdiffusion.training.train_autoencoder import export_checkpoint

    run = trained[0] / "run"
    path = export_checkpoint(run, checkpoint=run / "checkpoints" / "step-2", model_dir=tmp_path / "exported")
    assert json.loads((path / "training_state.json").read_text())["step"] == 2
    newest = export_checkpoint(run)  # default: the newest checkpoint, next to the run
    assert newest == run / "export-step-3"
    a, b = load_pipeline(str(newest)), load_pipeline(str(trained[1]))  # step 3: the final model's EMA weights
    for (n, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(p, q), n
    assert torch.equal(a.attribute_directions.directions, b.attribute_directions.directions)
    with pytest.raises(ValueError, match="output_dir must be a training run"):
        export_checkpoint(tmp_path / "nothing")


def test_unet_type_is_validated(tmp_path):
    with pytest.raises(ValueError, match="unet_type must be 'unet2d' or 'diffae', got unet_type='dit'"):
        train_autoencoder(AutoencoderTrainingConfig(output_dir=str(tmp_path), unet_type="dit"))


def test_build_diffae_unet_starts_at_zero_and_checks_widths():
    torch.manual_seed(0)
    unet = build_diffae_unet(sample_size=16, block_out_channels=(8, 16))
    x = torch.randn(2, 3, 16, 16)
    out = unet(x, torch.tensor([10, 900]), cond=torch.randn(2, 32)).sample
    assert torch.count_nonzero(out) == 0  # zero-initialised output convolution
    assert unet.config.cond_channels == 32 and unet.config.channel_mult == (1, 2)
    assert unet.config.attention_resolutions == (8,)
    with pytest.raises(ValueError, match=r"block_out_channels must be positive multiples .*\[8, 12\]"):
        build_diffae_unet(sample_size=16, block_out_channels=(8, 12))


def test_diffae_scheduler_is_the_official_linear_schedule():
    sched = build_diffae_scheduler()
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-5)
    assert sched.config.clip_sample and sched.config.beta_schedule == "linear"
