"""train_autoencoder with the DiffAE decoder (``unet_type="diffae"``): trains, checkpoints, resumes, and saves a
pipeline whose every stage works; the builder's checks and its zero-initialised outputs."""

import dataclasses
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


class _Oracle(torch.nn.Module):
    """A 'network' that knows x0: it returns the exact noise (or v) of any x_t under the scheduler's alphas."""

    def __init__(self, x0, alphas_cumprod, kind):
        super().__init__()
        self.x0, self.ac, self.kind = x0, alphas_cumprod.double(), kind

    def forward(self, x, timestep, cond):
        a = self.ac[timestep].view(-1, 1, 1, 1)
        eps = (x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()
        out = eps if self.kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * self.x0
        return type("Out", (), {"sample": out.float()})()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_diffae_sampler_with_exact_predictions_lands_on_x0(kind):
    """Deterministic DDIM with the exact prediction reaches x0 from any code, and inversion then decoding is exact:
    the v -> eps conversion is right (a wrong sign or alpha would miss by far more than float error)."""
    from dpdiffusion.models.diffae_sampler import diffae_ddim_decode, diffae_ddim_invert

    sched = build_diffae_scheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 1.6 - 0.8
    oracle = _Oracle(x0.double(), sched.alphas_cumprod, kind)
    cond = torch.zeros(2, 4)
    out = diffae_ddim_decode(oracle, sched, torch.randn(2, 3, 8, 8, generator=g), cond, 10)
    assert (out - x0).abs().max() < 1e-3
    x_t = diffae_ddim_invert(oracle, sched, x0, cond, 10)
    assert (diffae_ddim_decode(oracle, sched, x_t, cond, 10) - x0).abs().max() < 1e-3


def test_v_prediction_training_saves_a_v_pipeline(tmp_path):
    torch.set_num_threads(1)
    model_dir = train_autoencoder(_config(tmp_path, max_steps=1, prediction_type="v_prediction"))
    from dpdiffusion.models.default import load_pipeline

    pipe = load_pipeline(str(model_dir))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    out = pipe.decode(pipe.encode(torch.rand(1, 3, 16, 16)), num_inference_steps=2, output_type="np", progress=False)
    assert out.shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match="prediction_type must be 'epsilon', or 'v_prediction' with unet_type='diffae'"):
        train_autoencoder(AutoencoderTrainingConfig(output_dir=str(tmp_path / "x"), prediction_type="v_prediction"))


def test_v_target_is_salimans_and_ho():
    from dpdiffusion.training.train_autoencoder import _target

    ac = build_diffae_scheduler().alphas_cumprod
    x0, noise, t = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.tensor([0, 500, 999])
    assert torch.equal(_target("epsilon", x0, noise, t, ac), noise)
    v = _target("v_prediction", x0, noise, t, ac)
    a = ac[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    torch.testing.assert_close(a.sqrt() * x_t - (1 - a).sqrt() * v, x0, rtol=0, atol=1e-5)  # x0 from (x_t, v)


def test_check_checkpoint_script_prints_its_figures(trained):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "scripts/check_checkpoint.py", "--output_dir", str(trained[0] / "run"),
                          "--num-images", "4", "--steps", "2", "--timesteps", "10", "999"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["checkpoint"].endswith("step-3") and out["prediction_type"] == "epsilon"
    assert set(out["random_code_psnr_db"]) == {"2"} and out["inversion_psnr_db"] > 0
    assert set(out["z_swap_effect"]) == {"10", "999"} and all(v >= 0 for v in out["z_swap_effect"].values())


def test_init_from_starts_a_run_from_a_pipelines_weights(trained, tmp_path):
    """A fresh run with init_from starts at the given pipeline's encoder and UNet (checked on the weights after a
    zero-learning-rate step: the EMA of unchanged weights is those weights), refuses a folder of another
    architecture, and is ignored once the run has a checkpoint of its own."""
    from dpdiffusion.models.default import load_pipeline

    src = load_pipeline(str(trained[1]))
    out = train_autoencoder(_config(tmp_path, max_steps=1, learning_rate=0.0, init_from=str(trained[1]), seed=5))
    got = load_pipeline(str(out))
    for part in ("encoder", "unet"):
        for (n, p), (_, q) in zip(getattr(src, part).state_dict().items(), getattr(got, part).state_dict().items()):
            assert torch.equal(p, q), (part, n)
    fresh = load_pipeline(str(train_autoencoder(_config(tmp_path / "fresh", max_steps=1, learning_rate=0.0, seed=5))))
    assert not all(torch.equal(p, q) for p, q in zip(src.unet.parameters(), fresh.unet.parameters()))
    with pytest.raises(ValueError, match="init_from=.*does not match the configured architecture"):
        train_autoencoder(dataclasses.replace(_config(tmp_path / "wide", max_steps=1, init_from=str(trained[1])),
                                              unet_channels=[16, 16]))
    with pytest.raises(ValueError, match="init_from must be a pipeline folder"):
        train_autoencoder(_config(tmp_path / "none", max_steps=1, init_from=str(tmp_path / "missing")))
