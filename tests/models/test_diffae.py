import pytest
import torch

from dpdiffusion.models.diffae import build_scheduler, build_unet, ddim_decode, ddim_invert, ddim_pairs
from dpdiffusion.models.semantic_encoder import SemanticEncoder


def test_ddim_grid_shared_and_ends_at_final_alpha():
    sched = build_scheduler()
    pairs = ddim_pairs(sched, 10)
    assert len(pairs) == 10
    assert pairs[-1][2] == float(sched.final_alpha_cumprod) == 1.0
    # consecutive: the "prev" of step k is the "current" of step k + 1
    for (t0, a0, p0), (t1, a1, p1) in zip(pairs, pairs[1:]):
        assert t1 < t0 and p0 == a1
    with pytest.raises(ValueError, match="num_inference_steps"):
        ddim_pairs(sched, 0)


def test_inversion_is_exact_for_a_constant_eps_model():
    """With an eps-model independent of x, DDIM inversion followed by decoding is exact."""

    class ConstEps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("e", torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)))

        def forward(self, x, t, class_labels=None):
            return type("O", (), {"sample": self.e.expand_as(x)})()

    sched = build_scheduler()
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    cond = torch.zeros(2, 4)
    xt = ddim_invert(ConstEps(), sched, x0, cond, 20)
    back = ddim_decode(ConstEps(), sched, xt, cond, 20)
    assert torch.allclose(back, x0, atol=1e-4)


def test_encoder_and_unet_shapes_and_save_load(tmp_path):
    torch.manual_seed(0)
    enc = SemanticEncoder(sample_size=16, latent_dim=8, block_out_channels=(8, 16), condition_dim=32,
                          norm_num_groups=4)
    unet = build_unet(sample_size=16, block_out_channels=(8, 16), norm_num_groups=4)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    z = enc(x)
    assert z.shape == (3, 8) and enc.condition(z).shape == (3, 32)
    out = unet(x, torch.tensor([5, 6, 7]), class_labels=enc.condition(z)).sample
    assert out.shape == x.shape
    enc.save_pretrained(tmp_path / "enc")
    again = SemanticEncoder.from_pretrained(tmp_path / "enc")
    assert torch.equal(again(x), z)
    assert (tmp_path / "enc" / "diffusion_pytorch_model.safetensors").exists()
