"""Official ChexGen checkpoints -> ChexGenDiT (chexgen.models.official).

The official-layout state dicts are built here from the key / shape list of the
official code (FACTS.md section 2) with small depth and width, and the converted
model is compared with a plain-torch reference of the official block math written
below (it does not use diffusers).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from chexgen.errors import ChexgenError
from chexgen.models.official import (
    infer_architecture,
    load_official_transformer,
    map_official_control_state_dict,
    official_state_dict_keys,
    read_official_checkpoint,
    split_control_checkpoint,
)

# Small official-layout model: same names, tiny sizes.
DEPTH, HIDDEN, HEADS, PATCH, IN_CH, CAP, TOKENS = 2, 48, 4, 2, 4, 20, 7


# --------------------------------------------------------------------------- official layout
def mae_pos_embed(dim: int, grid: int, scale: float, base: int | None = None) -> torch.Tensor:
    """2-D sin-cos table in the MAE layout: first half encodes the column, second half the row."""
    base = grid if base is None else base
    pos = torch.arange(grid, dtype=torch.float64) / (grid / base) / scale
    cols, rows = torch.meshgrid(pos, pos, indexing="xy")  # cols[i, j] = pos[j]

    def one_d(d: int, p: torch.Tensor) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = p.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([one_d(dim // 2, cols), one_d(dim // 2, rows)], dim=1)[None].float()


def official_state_dict(depth=DEPTH, hidden=HIDDEN, grid=16, scale=1.0, seed=0, std=0.1, cap=CAP, tokens=TOKENS):
    """Random weights under the official names and shapes (out channels = 2 x in, learned sigma)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=std):
        return torch.randn(*shape, generator=g) * s

    out_ch = 2 * IN_CH
    sd = {
        "pos_embed": mae_pos_embed(hidden, grid, scale),
        "x_embedder.proj.weight": r(hidden, IN_CH, PATCH, PATCH),
        "x_embedder.proj.bias": r(hidden),
        "t_embedder.mlp.0.weight": r(hidden, 256),
        "t_embedder.mlp.0.bias": r(hidden),
        "t_embedder.mlp.2.weight": r(hidden, hidden),
        "t_embedder.mlp.2.bias": r(hidden),
        "t_block.1.weight": r(6 * hidden, hidden),
        "t_block.1.bias": r(6 * hidden),
        "y_embedder.y_embedding": r(tokens, cap, s=1.0),
        "y_embedder.y_proj.fc1.weight": r(hidden, cap),
        "y_embedder.y_proj.fc1.bias": r(hidden),
        "y_embedder.y_proj.fc2.weight": r(hidden, hidden),
        "y_embedder.y_proj.fc2.bias": r(hidden),
        "final_layer.shift_scale_table": r(2, hidden, s=0.5),
        "final_layer.linear.weight": r(PATCH * PATCH * out_ch, hidden),
        "final_layer.linear.bias": r(PATCH * PATCH * out_ch),
    }
    for n in range(depth):
        b = f"blocks.{n}."
        sd[b + "shift_scale_gate_table"] = r(6, hidden, s=0.5)
        for name, rows, cols in (("attn.qkv", 3 * hidden, hidden), ("attn.proj", hidden, hidden),
                                 ("cross_attn.q_linear", hidden, hidden), ("cross_attn.kv_linear", 2 * hidden, hidden),
                                 ("cross_attn.proj", hidden, hidden), ("mlp.fc1", 4 * hidden, hidden),
                                 ("mlp.fc2", hidden, 4 * hidden)):
            sd[f"{b}{name}.weight"] = r(rows, cols)
            sd[f"{b}{name}.bias"] = r(rows)
    assert sorted(sd) == sorted(official_state_dict_keys(depth))
    return sd


# --------------------------------------------------------------------------- reference math
def layer_norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def linear(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def attention(q, k, v, heads):
    """q [Nq, D], k/v [Nk, D] -> [Nq, D] (softmax(q k^T / sqrt(d)) v per head)."""
    d = q.shape[-1] // heads
    q, k, v = (t.reshape(t.shape[0], heads, d).transpose(0, 1) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)
    return (w @ v).transpose(0, 1).reshape(-1, heads * d)


def timestep_features(t, dim=256, max_period=10000):
    """[cos, sin] features; float32 like the official code (sin/cos of t up to 999 round at ~1e-4 there)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).double()


def official_block(sd, p, xi, yi, t0i, heads, hidden):
    """One official block ``p`` ("blocks.N." or "controlnet.i.copied_block.") on tokens xi [N, D]."""
    sh_a, sc_a, g_a, sh_m, sc_m, g_m = sd[p + "shift_scale_gate_table"] + t0i.reshape(6, hidden)
    hmod = layer_norm(xi) * (1 + sc_a) + sh_a
    q, k, v = linear(sd, p + "attn.qkv", hmod).chunk(3, dim=-1)
    xi = xi + g_a * linear(sd, p + "attn.proj", attention(q, k, v, heads))
    kv = linear(sd, p + "cross_attn.kv_linear", yi)
    ck, cv = kv[:, :hidden], kv[:, hidden:]  # K rows first, then V
    cq = linear(sd, p + "cross_attn.q_linear", xi)
    xi = xi + linear(sd, p + "cross_attn.proj", attention(cq, ck, cv, heads))
    hmod = layer_norm(xi) * (1 + sc_m) + sh_m
    return xi + g_m * linear(sd, p + "mlp.fc2", F.gelu(linear(sd, p + "mlp.fc1", hmod), approximate="tanh"))


def official_forward(sd, x, t, y, mask, heads=HEADS, depth=DEPTH, control_sd=None, cond=None):
    """The official DiT forward pass, written from the published block math (float64).

    With ``control_sd`` (keys ``controlnet.*``) and ``cond`` latents: the official
    ControlT2IDiT forward, control block j feeding base block j + 1.
    """
    sd = {k: v.double() for k, v in sd.items()}
    x, y = x.double(), y.double()
    bsz, _, h, w = x.shape
    hidden = sd["x_embedder.proj.weight"].shape[0]

    def embed(img):
        tok = F.conv2d(img.double(), sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=PATCH)
        return tok.flatten(2).transpose(1, 2) + sd["pos_embed"]

    tokens = embed(x)
    temb = linear(sd, "t_embedder.mlp.2", F.silu(linear(sd, "t_embedder.mlp.0", timestep_features(t))))
    t0 = linear(sd, "t_block.1", F.silu(temb))
    y = linear(sd, "y_embedder.y_proj.fc2", F.gelu(linear(sd, "y_embedder.y_proj.fc1", y), approximate="tanh"))
    csd = {k: v.double() for k, v in (control_sd or {}).items()}
    n_ctrl = len({k.split(".")[1] for k in csd if k.endswith("after_proj.weight")})
    ctokens = embed(cond) if control_sd is not None else None
    out = []
    for i in range(bsz):
        xi = tokens[i]
        yi = y[i][mask[i].bool()]  # the official code drops padding tokens before cross-attention
        xi = official_block(sd, "blocks.0.", xi, yi, t0[i], heads, hidden)
        c = None
        for j in range(1, depth):
            if j - 1 < n_ctrl:
                cp = f"controlnet.{j - 1}."
                c_in = xi + linear(csd, cp + "before_proj", ctokens[i]) if j == 1 else c
                c = official_block(csd, cp + "copied_block.", c_in, yi, t0[i], heads, hidden)
                xi = xi + linear(csd, cp + "after_proj", c)
            xi = official_block(sd, f"blocks.{j}.", xi, yi, t0[i], heads, hidden)
        shift, scale = sd["final_layer.shift_scale_table"] + temb[i][None]  # raw t, shift then scale
        xi = linear(sd, "final_layer.linear", layer_norm(xi) * (1 + scale) + shift)
        out.append(xi)
    gh, gw = h // PATCH, w // PATCH
    c_out = out[0].shape[-1] // (PATCH * PATCH)
    z = torch.stack(out).reshape(bsz, gh, gw, PATCH, PATCH, c_out)
    return torch.einsum("nhwpqc->nchpwq", z).reshape(bsz, c_out, gh * PATCH, gw * PATCH)


def inputs(grid, seed=1, bsz=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, IN_CH, grid * PATCH, grid * PATCH, generator=g)
    y = torch.randn(bsz, TOKENS, CAP, generator=g)
    lengths = [TOKENS, 3, 1][:bsz]
    mask = torch.zeros(bsz, TOKENS, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    t = torch.tensor([0, 371, 999][:bsz])
    return x, t, y, mask


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("resolution,scale", [(256, 1.0), (512, 2.0)])
def test_converted_model_matches_official_block_math(tmp_path, resolution, scale):
    grid = resolution // 8 // PATCH
    sd = official_state_dict(grid=grid, scale=scale)
    path = tmp_path / "official.pth"
    torch.save({"state_dict": {"module." + k: v * 0 for k, v in sd.items()},
                "state_dict_ema": {"module." + k: v for k, v in sd.items()}}, path)

    model, arch, control = load_official_transformer(path, num_heads=HEADS)
    assert control is None
    assert (arch.depth, arch.hidden_size, arch.sample_size, arch.resolution) == (DEPTH, HIDDEN, 2 * grid, resolution)
    assert arch.interpolation_scale == scale and model.config.interpolation_scale == scale
    assert model.config.null_caption_mask == "prompt"
    assert not any(p.is_meta for p in model.parameters())

    bsz = 3 if resolution == 256 else 1
    x, t, y, mask = inputs(grid, bsz=bsz)
    with torch.no_grad():
        got = model(x, t, y, mask)
    want = official_forward(sd, x, t, y, mask)
    assert got.shape == want.shape == (bsz, 2 * IN_CH, 2 * grid, 2 * grid)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)

    # Null caption (CFG's unconditional branch) with the prompt's own mask, as official sampling does.
    null_emb, null_mask = model.null_text(bsz, mask_like=mask)
    with torch.no_grad():
        got_null = model(x, t, null_emb, null_mask)
    want_null = official_forward(sd, x, t, sd["y_embedder.y_embedding"].expand(bsz, -1, -1), mask)
    torch.testing.assert_close(got_null.double(), want_null, atol=1e-5, rtol=1e-5)

    if resolution == 512:
        return
    # In float64 the converted model is the official math up to rounding, not merely close.
    model64 = model.double()
    with torch.no_grad():
        got64 = model64(x.double(), t, y.double(), mask)
    torch.testing.assert_close(got64, want, atol=1e-10, rtol=1e-10)


def test_every_key_used_and_every_parameter_filled():
    sd = official_state_dict()
    model, _, _ = load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS)
    params = dict(model.named_parameters())
    torch.testing.assert_close(params["null_caption"], sd["y_embedder.y_embedding"], rtol=0, atol=0)
    q = params["backbone.transformer_blocks.1.attn1.to_k.weight"]
    torch.testing.assert_close(q, sd["blocks.1.attn.qkv.weight"][HIDDEN:2 * HIDDEN], rtol=0, atol=0)
    v = params["backbone.transformer_blocks.0.attn2.to_v.bias"]
    torch.testing.assert_close(v, sd["blocks.0.cross_attn.kv_linear.bias"][HIDDEN:], rtol=0, atol=0)
    # Converted weights count exactly the official parameter count (pos_embed is a buffer, not a parameter).
    official_numel = sum(v.numel() for k, v in sd.items() if k != "pos_embed")
    assert sum(p.numel() for p in model.parameters()) == official_numel


def test_missing_and_unexpected_keys_are_listed():
    sd = official_state_dict()
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(HIDDEN)
    sd["extra_head.weight"] = torch.ones(3)
    with pytest.raises(ChexgenError) as err:
        load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS)
    msg = str(err.value)
    assert "1 missing" in msg and "backbone.transformer_blocks.1.ff.net.2.bias" in msg
    assert "2 unexpected" in msg and "blocks.0.attn.q_norm.weight" in msg and "extra_head.weight" in msg


def test_ema_is_default_and_non_ema_by_flag():
    ema, raw = official_state_dict(seed=0), official_state_dict(seed=5)
    ckpt = {"state_dict": raw, "state_dict_ema": ema}
    m_ema, _, _ = load_official_transformer(ckpt, num_heads=HEADS)
    m_raw, _, _ = load_official_transformer(ckpt, num_heads=HEADS, use_ema=False)
    torch.testing.assert_close(m_ema.null_caption, ema["y_embedder.y_embedding"])
    torch.testing.assert_close(m_raw.null_caption, raw["y_embedder.y_embedding"])
    with pytest.raises(ChexgenError, match="use-non-ema"):
        load_official_transformer({"state_dict": raw}, num_heads=HEADS)


def test_pos_embed_scale_comes_from_resolution_and_is_checked():
    sd = official_state_dict(grid=32, scale=1.0)  # a 512 px table built with the 256 px scale
    with pytest.raises(ChexgenError, match="matches scale 1.0"):
        load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS)
    arch = infer_architecture(official_state_dict(grid=16), num_heads=HEADS)
    assert (arch.resolution, arch.interpolation_scale) == (256, 1.0)
    with pytest.raises(ChexgenError, match="does not match"):
        infer_architecture(official_state_dict(grid=16), num_heads=HEADS, resolution=512)
    no_pe = official_state_dict(grid=32, scale=2.0)
    del no_pe["pos_embed"]
    assert infer_architecture(no_pe, resolution=512, num_heads=HEADS).interpolation_scale == 2.0


def test_default_head_count_is_official_head_size():
    sd = official_state_dict(hidden=144, depth=1)
    assert infer_architecture(sd).num_heads == 2  # 144 / 72


class _Payload:
    """Unpickling this would create a file: the loader must refuse before that happens."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict_ema": official_state_dict(), "args": _Payload(str(target))}, path)
    with pytest.raises(ChexgenError, match="refused"):
        read_official_checkpoint(path)
    with pytest.raises(ChexgenError, match="refused"):
        load_official_transformer(path, num_heads=HEADS)
    assert not target.exists()
    with pytest.raises(ChexgenError, match="not found"):
        read_official_checkpoint(tmp_path / "absent.pth")


def control_checkpoint(blocks=3, depth=4):
    base = official_state_dict(depth=depth)
    g = torch.Generator().manual_seed(9)
    sd = {"base_model." + k: v for k, v in base.items()}
    for i in range(blocks):
        for k, v in base.items():
            if k.startswith(f"blocks.{i}."):
                sd[f"controlnet.{i}.copied_block." + k.split(".", 2)[2]] = v + 0.01 * torch.randn(v.shape, generator=g)
        sd[f"controlnet.{i}.after_proj.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g)
        sd[f"controlnet.{i}.after_proj.bias"] = torch.randn(HIDDEN, generator=g)
    sd["controlnet.0.before_proj.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g)
    sd["controlnet.0.before_proj.bias"] = torch.randn(HIDDEN, generator=g)
    return base, sd


def test_control_checkpoint_mapping():
    base, sd = control_checkpoint()
    base_sd, control_sd = split_control_checkpoint(sd)
    assert sorted(base_sd) == sorted(base)
    mapped = map_official_control_state_dict(control_sd, num_blocks=3)
    assert mapped.unexpected == []
    w = mapped.state_dict
    # Per copy: the table, 2 x (3 self-attn + out + q + 2 kv + out + 2 mlp) tensors, after_proj; one before_proj.
    assert len(w) == 3 * (1 + 2 * 10 + 2) + 2
    torch.testing.assert_close(w["controlnet.2.copied_block.attn1.to_v.weight"],
                               control_sd["2.copied_block.attn.qkv.weight"][2 * HIDDEN:], rtol=0, atol=0)
    torch.testing.assert_close(w["controlnet.0.before_proj.weight"], control_sd["0.before_proj.weight"])
    torch.testing.assert_close(w["controlnet.1.after_proj.bias"], control_sd["1.after_proj.bias"])
    custom = map_official_control_state_dict(control_sd, num_blocks=3,
                                             layout={"block": "controlnet_blocks.{i}.",
                                                     "after_proj": "after.{i}."})
    assert "controlnet_blocks.1.attn2.to_k.weight" in custom.state_dict and "after.2.weight" in custom.state_dict
    assert "controlnet.3.after_proj.weight" in map_official_control_state_dict(
        {**control_sd, "3.after_proj.weight": torch.ones(1)}, num_blocks=3).unexpected

    model, _, control = load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS, control=True)
    assert sorted(control) == sorted(w)
    with pytest.raises(ChexgenError, match="--control"):
        load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS)
    with pytest.raises(ChexgenError, match="without --control"):
        load_official_transformer({"state_dict_ema": base}, num_heads=HEADS, control=True)


def test_aliases_for_one_table_cannot_both_load():
    sd = official_state_dict()
    sd["final_layer.scale_shift_table"] = sd["final_layer.shift_scale_table"] + 1  # PixArt's name as well
    with pytest.raises(ChexgenError, match="already filled"):
        load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS)


def test_paper_size_keys_and_shapes_fit_on_the_meta_device():
    """DiT-XL/2 at 512 px and its 13-block control adapter, checked without allocating any weights."""
    from accelerate import init_empty_weights

    from chexgen.models.controlnet import ChexGenControlNet
    from chexgen.models.official import build_empty_transformer, check_keys, map_official_state_dict
    from chexgen.pipelines.convert_official import reference_specs as _specs

    h, d = 1152, 28
    shapes = {"x_embedder.proj.weight": (h, 4, 2, 2), "x_embedder.proj.bias": (h,),
              "t_embedder.mlp.0.weight": (h, 256), "t_embedder.mlp.0.bias": (h,),
              "t_embedder.mlp.2.weight": (h, h), "t_embedder.mlp.2.bias": (h,),
              "t_block.1.weight": (6 * h, h), "t_block.1.bias": (6 * h,),
              "y_embedder.y_embedding": (120, 4096), "y_embedder.y_proj.fc1.weight": (h, 4096),
              "y_embedder.y_proj.fc1.bias": (h,), "y_embedder.y_proj.fc2.weight": (h, h),
              "y_embedder.y_proj.fc2.bias": (h,), "final_layer.shift_scale_table": (2, h),
              "final_layer.linear.weight": (32, h), "final_layer.linear.bias": (32,)}
    block = {"shift_scale_gate_table": (6, h), "attn.qkv.weight": (3 * h, h), "attn.qkv.bias": (3 * h,),
             "attn.proj.weight": (h, h), "attn.proj.bias": (h,), "cross_attn.q_linear.weight": (h, h),
             "cross_attn.q_linear.bias": (h,), "cross_attn.kv_linear.weight": (2 * h, h),
             "cross_attn.kv_linear.bias": (2 * h,), "cross_attn.proj.weight": (h, h), "cross_attn.proj.bias": (h,),
             "mlp.fc1.weight": (4 * h, h), "mlp.fc1.bias": (4 * h,), "mlp.fc2.weight": (h, 4 * h),
             "mlp.fc2.bias": (h,)}
    for n in range(d):
        shapes.update({f"blocks.{n}.{k}": v for k, v in block.items()})
    assert sorted(shapes) == sorted(k for k in official_state_dict_keys(d) if k != "pos_embed")
    sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}

    arch = infer_architecture(sd, resolution=512)
    assert (arch.num_heads, arch.sample_size, arch.interpolation_scale, arch.out_channels) == (16, 64, 2.0, 8)
    model = build_empty_transformer(arch)
    mapped = map_official_state_dict(sd)
    check_keys(mapped.state_dict, model.state_dict(), mapped.unexpected)
    assert sum(v.numel() for v in sd.values()) == sum(p.numel() for p in model.parameters())
    preset, te, vae = _specs(arch, None, None)
    assert preset == "xl2-512" and (te.kind, te.max_length, te.embed_dim) == ("t5", 120, 4096)
    assert vae.name_or_path == "stabilityai/sd-vae-ft-ema"

    ctrl = {f"controlnet.{i}.copied_block.{k}": torch.empty(v, device="meta")
            for i in range(13) for k, v in block.items()}
    ctrl.update({f"controlnet.{i}.after_proj.{p}": torch.empty((h, h) if p == "weight" else (h,), device="meta")
                 for i in range(13) for p in ("weight", "bias")})
    ctrl.update({f"controlnet.0.before_proj.{p}": torch.empty((h, h) if p == "weight" else (h,), device="meta")
                 for p in ("weight", "bias")})
    assert sorted(ctrl) == sorted(k for k in official_state_dict_keys(d, 13) if k.startswith("controlnet."))
    mapped_c = map_official_control_state_dict({k[len("controlnet."):]: v for k, v in ctrl.items()})
    with init_empty_weights():
        adapter = ChexGenControlNet(num_blocks=13, base_depth=28)
    check_keys(mapped_c.state_dict, adapter.state_dict(), mapped_c.unexpected)


def test_pos_embed_scale_is_read_off_the_saved_table_at_other_resolutions():
    """384 px (grid 24) has no official scale: the saved table says 1.5; --pos-embed-scale overrides."""
    from chexgen.models.official import infer_pos_embed_scale

    sd = official_state_dict(grid=24, scale=1.5)
    model, arch, _ = load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS)
    assert (arch.resolution, arch.interpolation_scale) == (384, 1.5)
    torch.testing.assert_close(model.backbone.pos_embed.pos_embed, sd["pos_embed"], atol=1e-5, rtol=0)
    for scale in (0.5, 1.0, 2.0, 1.37, 3.0):
        assert infer_pos_embed_scale(mae_pos_embed(HIDDEN, 24, scale)) == scale
        assert infer_pos_embed_scale(mae_pos_embed(HIDDEN, 24, scale).half()) == scale
    assert infer_pos_embed_scale(torch.randn(1, 576, HIDDEN)) is None
    # the option wins, and a wrong one is caught by the table check, naming the option
    with pytest.raises(ChexgenError, match=r"matches scale 1\.5: pass --pos-embed-scale 1\.5"):
        load_official_transformer({"state_dict_ema": sd}, num_heads=HEADS, interpolation_scale=2.0)
    no_pe = dict(sd)
    del no_pe["pos_embed"]
    with pytest.raises(ChexgenError, match="pass --pos-embed-scale"):
        infer_architecture(no_pe, resolution=384, num_heads=HEADS)
    assert infer_architecture(no_pe, resolution=384, num_heads=HEADS, interpolation_scale=1.5).interpolation_scale \
        == 1.5
