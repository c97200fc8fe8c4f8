"""RadiographVAE: shapes, gray<->RGB, scaling in one place, save/load."""

from __future__ import annotations

import pytest
import torch

from chexgen.errors import ChexgenError
from chexgen.models.presets import VAESpec
from chexgen.models.vae import RadiographVAE, build_gray_autoencoder

SMALL = VAESpec(kind="gray", block_out_channels=(8, 8, 16, 16), downsample=8)


def test_gray_vae_shapes_and_range():
    torch.manual_seed(0)
    vae = RadiographVAE.from_spec(SMALL).eval()
    assert (vae.in_channels, vae.latent_channels, vae.downsample_factor) == (1, 4, 8)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
    assert z.shape == (2, 4, 4, 4)
    assert y.shape == (2, 1, 32, 32) and 0.0 <= y.min() and y.max() <= 1.0


def test_scaling_factor_applied_in_encode_and_decode():
    torch.manual_seed(0)
    vae = RadiographVAE.from_spec(SMALL).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        z1 = vae.encode(x)
        y1 = vae.decode(z1)
        vae.autoencoder.register_to_config(scaling_factor=0.5)
        z2 = vae.encode(x)
        assert torch.allclose(z2, z1 * 0.5, atol=1e-6)
        assert torch.allclose(vae.decode(z2), y1, atol=1e-6)  # decode undoes the new scale
        mean, std = vae.encode_moments(x)
        assert torch.allclose(mean, z2, atol=1e-6) and (std > 0).all()
        g = [torch.Generator().manual_seed(3)]
        s1 = vae.encode(x, sample=True, generator=g)
        s2 = vae.encode(x, sample=True, generator=[torch.Generator().manual_seed(3)])
        assert torch.equal(s1, s2) and not torch.allclose(s1, z2)


def test_rgb_vae_repeats_gray_and_averages_back():
    torch.manual_seed(0)
    ae = build_gray_autoencoder((8, 8, 16, 16))
    rgb = type(ae)(in_channels=3, out_channels=3, down_block_types=ae.config.down_block_types,
                   up_block_types=ae.config.up_block_types, block_out_channels=(8, 8, 16, 16),
                   layers_per_block=1, latent_channels=4, norm_num_groups=8, scaling_factor=0.18215)
    vae = RadiographVAE(rgb).eval()
    x = torch.rand(1, 1, 32, 32)
    captured = {}
    orig = vae.autoencoder.encode

    def spy(inp):
        captured["x"] = inp
        return orig(inp)

    vae.autoencoder.encode = spy
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
    assert captured["x"].shape[1] == 3 and torch.allclose(captured["x"][:, 0], x[:, 0] * 2 - 1)
    assert torch.equal(captured["x"][:, 0], captured["x"][:, 2])
    assert y.shape == (1, 1, 32, 32) and vae.scaling_factor == pytest.approx(0.18215)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    vae = RadiographVAE.from_spec(SMALL).eval()
    vae.autoencoder.register_to_config(scaling_factor=0.7)
    vae.save_pretrained(tmp_path / "vae")
    back = RadiographVAE.from_spec(VAESpec(kind="gray", name_or_path=str(tmp_path / "vae"),
                                           block_out_channels=(8, 8, 16, 16))).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(back.encode(x), vae.encode(x))
    assert back.scaling_factor == pytest.approx(0.7)


def test_missing_folder_and_wrong_shape_are_clear_errors(tmp_path):
    with pytest.raises(ChexgenError, match="does not exist"):
        RadiographVAE.from_pretrained(str(tmp_path / "nope"))
    vae = RadiographVAE.from_spec(SMALL)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        vae.encode(torch.rand(1, 3, 32, 32))
