"""ChexGenDiT: shapes, masking, null caption, resolution change, save/load."""

from __future__ import annotations

import pytest
import torch

from chexgen.models.dit import ChexGenDiT

KW = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
          caption_channels=16, max_text_len=6)


def _randomised(**kw) -> ChexGenDiT:
    torch.manual_seed(0)
    m = ChexGenDiT(**{**KW, **kw}).eval()
    with torch.no_grad():  # leave the zero-init start so outputs depend on every input
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _inputs(b=2, n=6, c=16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, 8, 8, generator=g)
    e = torch.randn(b, n, c, generator=g)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[:, 3:] = 0
    return x, e, mask


def test_fresh_model_predicts_zero_and_has_learned_sigma_channels():
    m = ChexGenDiT(**KW)
    x, e, mask = _inputs()
    out = m(x, torch.tensor([3, 900]), e, mask)
    assert out.shape == (2, 8, 8, 8)
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer (DiT start)


def test_padding_tokens_are_ignored_and_real_tokens_matter():
    m = _randomised()
    x, e, mask = _inputs()
    with torch.no_grad():
        ref = m(x, torch.tensor([10, 10]), e, mask)
        e2 = e.clone()
        e2[:, 4:] = 100.0  # padding positions changed
        assert torch.allclose(m(x, torch.tensor([10, 10]), e2, mask), ref, atol=1e-5)
        e3 = e.clone()
        e3[:, 0] += 1.0  # a real token changed
        assert not torch.allclose(m(x, torch.tensor([10, 10]), e3, mask), ref, atol=1e-4)


def test_timestep_forms_are_equivalent():
    m = _randomised()
    x, e, mask = _inputs()
    with torch.no_grad():
        a = m(x, torch.tensor([7, 7]), e, mask)
        b = m(x, torch.tensor(7), e, mask)
        c = m(x, torch.tensor([7.0, 7.0]), e, mask)
    assert torch.allclose(a, b) and torch.allclose(a, c, atol=1e-6)


def test_null_text_masks():
    m = ChexGenDiT(**KW)
    _, _, mask = _inputs()
    emb, full = m.null_text(2, mask_like=mask)
    assert emb.shape == (2, 6, 16) and full.sum().item() == 12
    m2 = ChexGenDiT(**{**KW, "null_caption_mask": "prompt"})
    _, pm = m2.null_text(2, mask_like=mask)
    assert torch.equal(pm, mask)


def test_set_resolution_rebuilds_pos_embed_and_round_trips(tmp_path):
    m = _randomised()
    m.set_resolution(16, interpolation_scale=2.0)
    assert m.backbone.pos_embed.pos_embed.shape == (1, 64, 32)
    x = torch.randn(1, 4, 16, 16)
    e = torch.randn(1, 6, 16)
    with torch.no_grad():
        out = m(x, torch.tensor([5]), e)
    assert out.shape == (1, 8, 16, 16)
    m.save_pretrained(tmp_path)
    back = ChexGenDiT.from_pretrained(tmp_path).eval()
    assert back.config.sample_size == 16 and back.config.interpolation_scale == 2.0
    with torch.no_grad():
        assert torch.equal(back(x, torch.tensor([5]), e), out)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()


def test_reset_null_caption_redraws_with_the_init_scale():
    m = ChexGenDiT(**KW)
    before = m.null_caption.detach().clone()
    m.reset_null_caption(torch.Generator().manual_seed(3))
    assert not torch.equal(before, m.null_caption) and m.null_caption.shape == before.shape
    assert 0.1 < float(m.null_caption.detach().std() * 16**0.5) < 3.0


def test_backbone_keeps_diffusers_parameter_names():
    names = dict(ChexGenDiT(**KW).named_parameters())
    for key in ("null_caption", "backbone.adaln_single.linear.weight", "backbone.caption_projection.linear_1.weight",
                "backbone.transformer_blocks.0.attn2.to_k.weight", "backbone.scale_shift_table",
                "backbone.proj_out.weight", "backbone.pos_embed.proj.weight"):
        assert key in names


def test_gradient_checkpointing_runs_backward():
    m = _randomised().train()
    m.enable_gradient_checkpointing()
    x, e, mask = _inputs()
    m(x, torch.tensor([1, 2]), e, mask).square().mean().backward()
    assert m.backbone.proj_out.weight.grad is not None


def test_sample_size_128_does_not_switch_on_micro_conditioning():
    # diffusers turns resolution/aspect-ratio conditioning on when sample_size == 128 (PixArt 1024 px);
    # PixArt-alpha 256/512 and ChexGen do not use it.
    m = ChexGenDiT(**{**KW, "sample_size": 128, "patch_size": 16})
    assert m.backbone.use_additional_conditions is False
    assert not any("resolution_embedder" in n for n, _ in m.named_parameters())
    with torch.no_grad():
        out = m(torch.randn(1, 4, 128, 128), torch.tensor([3]), torch.randn(1, 6, 16))
    assert out.shape == (1, 8, 128, 128)


def test_bad_config_is_rejected():
    from chexgen.errors import ChexgenError

    with pytest.raises(ChexgenError):
        ChexGenDiT(**{**KW, "num_heads": 3})
