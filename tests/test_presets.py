"""Preset registry: shapes, derived kwargs, parameter counts on the meta device."""

from __future__ import annotations

import pytest
import torch

from chexgen.errors import ChexgenError
from chexgen.models.dit import ChexGenDiT, count_parameters
from chexgen.models.presets import Preset, get_preset, list_presets, register_preset


def test_registry_lists_the_documented_presets():
    assert {"tiny", "small", "xl2-256", "xl2-512"} <= set(list_presets())


def test_unknown_preset_error_lists_known_names():
    with pytest.raises(ChexgenError) as err:
        get_preset("xl3")
    assert "xl3" in str(err.value) and "tiny" in str(err.value)


def test_register_refuses_silent_overwrite():
    with pytest.raises(ChexgenError):
        register_preset(get_preset("tiny"))


@pytest.mark.parametrize("name", ["tiny", "tiny-f4", "small", "xl2-256", "xl2-512"])
def test_preset_builds_consistent_dit_on_meta(name):
    p = get_preset(name)
    kw = p.transformer_kwargs()
    assert kw["sample_size"] * p.vae.downsample == p.resolution
    assert kw["caption_channels"] == p.text_encoder.embed_dim
    assert kw["max_text_len"] == p.text_encoder.max_length
    with torch.device("meta"):
        m = ChexGenDiT.from_preset(name)
    assert m.out_channels == 2 * p.vae.latent_channels  # learned sigma
    assert tuple(m.null_caption.shape) == (p.text_encoder.max_length, p.text_encoder.embed_dim)
    tokens = (kw["sample_size"] // kw["patch_size"]) ** 2
    assert m.backbone.pos_embed.pos_embed.shape[1] == tokens
    assert m.backbone.use_additional_conditions is False


def test_tiny_is_about_ten_million_parameters():
    with torch.device("meta"):
        m = ChexGenDiT.from_preset("tiny")
    assert 7e6 <= count_parameters(m) <= 13e6
    p = get_preset("tiny")
    assert p.resolution == 128 and p.latent_size == 16 and p.vae.kind == "gray"
    assert p.text_encoder.kind == "minilm" and p.text_encoder.embed_dim == 384 and p.text_encoder.max_length == 64
    assert get_preset("small").text_encoder.max_length == 120


def test_xl2_512_matches_pixart_alpha_xl2_size_without_allocating():
    with torch.device("meta"):
        m = ChexGenDiT.from_preset("xl2-512")
    assert all(p.device.type == "meta" for p in m.parameters())
    n = count_parameters(m)
    # PixArt-alpha XL/2 has ~611M parameters (ChexGen's DiT_XL_2 with 4096-d captions and 8 out channels).
    assert 580e6 <= n <= 640e6, n
    cfg = m.config
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (28, 1152, 16, 2)
    assert cfg.sample_size == 64 and cfg.interpolation_scale == 2.0
    assert get_preset("xl2-256").transformer["interpolation_scale"] == 1.0
    assert get_preset("xl2-512").vae.scaling_factor == pytest.approx(0.18215)


def test_preset_is_plain_data():
    p = get_preset("tiny")
    assert isinstance(p, Preset)
    with pytest.raises(Exception):
        p.resolution = 256  # frozen
