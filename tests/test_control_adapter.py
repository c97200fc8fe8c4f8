"""ControlNet adapter: exact identity at init, gradients only in the adapter, names, save/load."""

from __future__ import annotations

import pytest
import torch

from chexgen.errors import ChexgenError
from chexgen.models.controlnet import (
    ChexGenControlNet,
    ControlledDiT,
    controlled_forward,
    default_num_control_blocks,
    load_controlnet,
)
from chexgen.models.dit import ChexGenDiT

KW = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=4, num_heads=2,
          caption_channels=16, max_text_len=6)


def _base(**kw) -> ChexGenDiT:
    torch.manual_seed(0)
    m = ChexGenDiT(**{**KW, **kw})
    with torch.no_grad():  # leave the zero-init start so the output depends on every block
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _inputs(b=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999][:b])
    e = torch.randn(b, 6, 16, generator=g)
    mask = torch.ones(b, 6, dtype=torch.long)
    mask[0, 2:] = 0
    cond = torch.randn(b, 4, 8, 8, generator=g)
    return x, t, e, mask, cond


def _perturb(adapter: ChexGenControlNet, std=0.05) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def test_zero_initialised_adapter_leaves_output_exactly_unchanged():
    base = _base()
    model = ControlledDiT(base, ChexGenControlNet.from_transformer(base))
    x, t, e, mask, cond = _inputs()
    with torch.no_grad():
        ref = base(x, t, e, mask)
        out = model(x, t, e, mask, cond)
        assert ref.abs().mean() > 1e-3  # a real, non-trivial prediction
        assert torch.equal(out, ref)  # bit for bit
        assert torch.equal(model(x, t, e, mask, cond * 10 + 3), ref)
        # No control at all is exactly the base forward, too.
        assert torch.equal(controlled_forward(base, None, x, t, e, mask, None), ref)


def test_copies_and_official_names():
    base = _base(depth=6)
    adapter = ChexGenControlNet.from_transformer(base)
    assert adapter.num_blocks == default_num_control_blocks(6) == 3
    assert default_num_control_blocks(28) == 13
    for i, block in enumerate(adapter.controlnet):
        ref = base.backbone.transformer_blocks[i].state_dict()
        for k, v in block.copied_block.state_dict().items():
            assert torch.equal(v, ref[k])
    keys = set(adapter.state_dict())
    assert {"controlnet.0.before_proj.weight", "controlnet.0.before_proj.bias", "controlnet.2.after_proj.weight",
            "controlnet.1.copied_block.attn1.to_q.weight", "controlnet.1.copied_block.attn2.to_k.weight",
            "controlnet.0.copied_block.scale_shift_table"} <= keys
    assert not any(k.startswith("controlnet.1.before_proj") for k in keys)
    for name, p in adapter.named_parameters():
        if "_proj." in name and ("before_proj" in name or "after_proj" in name):
            assert torch.count_nonzero(p) == 0, name
    with pytest.raises(ChexgenError, match="num_blocks"):
        ChexGenControlNet.from_transformer(base, num_blocks=6)


def test_gradients_reach_only_the_adapter():
    base = _base()
    model = ControlledDiT(base, ChexGenControlNet.from_transformer(base))
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.controlnet.parameters()}
    model.train()
    assert not base.training
    x, t, e, mask, cond = _inputs()
    grads = []
    for step in range(2):
        opt.zero_grad()
        loss = (model(x, t, e, mask, cond) - 1.0).pow(2).mean()
        loss.backward()
        assert all(p.grad is None for p in base.parameters())
        grads.append({n: p.grad.abs().sum().item() for n, p in model.controlnet.named_parameters()
                      if p.grad is not None})
        opt.step()
    assert grads[0]["controlnet.0.after_proj.weight"] > 0 and grads[0]["controlnet.1.after_proj.weight"] > 0
    # before_proj only receives a gradient once after_proj has left zero (the ControlNet start).
    assert grads[0].get("controlnet.0.before_proj.weight", 0.0) == 0.0
    assert grads[1]["controlnet.0.before_proj.weight"] > 0
    assert grads[1]["controlnet.0.copied_block.attn1.to_q.weight"] > 0
    for k, v in base.state_dict().items():
        assert torch.equal(v, base_before[k]), k


def test_trained_adapter_steers_output_and_scale_zero_restores_base():
    base = _base()
    adapter = ChexGenControlNet.from_transformer(base)
    _perturb(adapter)
    model = ControlledDiT(base, adapter)
    x, t, e, mask, cond = _inputs()
    with torch.no_grad():
        ref = base(x, t, e, mask)
        a = model(x, t, e, mask, cond)
        b = model(x, t, e, mask, -cond)
        assert not torch.allclose(a, ref, atol=1e-4)
        assert not torch.allclose(a, b, atol=1e-4)
        assert torch.equal(model(x, t, e, mask, cond, conditioning_scale=0.0), ref)
        half = model(x, t, e, mask, cond, conditioning_scale=0.5)
        assert (half - ref).abs().mean() < (a - ref).abs().mean()
        # Each sample's output depends only on its own condition.
        single = model(x[1:2], t[1:2], e[1:2], mask[1:2], cond[1:2])
        assert torch.allclose(single, a[1:2], atol=1e-5)
    with pytest.raises(ChexgenError, match="control latents"):
        model(x, t, e, mask, cond[:, :, :4])


def test_gradient_checkpointing_gives_the_same_gradients():
    base = _base()
    adapter = ChexGenControlNet.from_transformer(base)
    _perturb(adapter)
    x, t, e, mask, cond = _inputs()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            base.enable_gradient_checkpointing()
            adapter.enable_gradient_checkpointing()
        adapter.zero_grad()
        model = ControlledDiT(base, adapter)
        model(x, t, e, mask, cond).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in adapter.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_save_load_round_trip_and_compatibility(tmp_path):
    base = _base()
    adapter = ChexGenControlNet.from_transformer(base)
    _perturb(adapter)
    adapter.save_pretrained(tmp_path / "ctrl")
    loaded = load_controlnet(str(tmp_path / "ctrl"), transformer=base)
    assert loaded.config.num_blocks == adapter.config.num_blocks and loaded.config.fit_policy == "crop"
    x, t, e, mask, cond = _inputs()
    with torch.no_grad():
        assert torch.equal(ControlledDiT(base, loaded)(x, t, e, mask, cond),
                           ControlledDiT(base, adapter)(x, t, e, mask, cond))
    other = _base(hidden_size=48, num_heads=3)
    with pytest.raises(ChexgenError, match="made for a base"):
        ControlledDiT(other, loaded)
    with pytest.raises(ChexgenError, match="adapter folder not found"):
        load_controlnet(str(tmp_path / "nowhere"))


def test_xl_adapter_matches_the_official_layout_on_the_meta_device():
    from accelerate import init_empty_weights

    with init_empty_weights():
        dit = ChexGenDiT.from_preset("xl2-512")
        adapter = ChexGenControlNet(num_blocks=default_num_control_blocks(dit.config.depth), base_depth=28,
                                    hidden_size=1152, num_heads=16, cross_attention_dim=1152)
    adapter.check_compatible(dit)
    assert adapter.num_blocks == 13
    shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert shapes["controlnet.0.before_proj.weight"] == (1152, 1152)
    assert shapes["controlnet.12.after_proj.weight"] == (1152, 1152)
    base_block = {k: tuple(v.shape) for k, v in dit.backbone.transformer_blocks[0].state_dict().items()}
    for i in range(13):
        copied = {k[len(f"controlnet.{i}.copied_block."):]: v for k, v in shapes.items()
                  if k.startswith(f"controlnet.{i}.copied_block.")}
        assert copied == base_block
