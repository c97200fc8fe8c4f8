"""Precision as one setting: CPU feature detection, auto resolution (and the flag that turns it off), the
pipelines' dtype, fp32 sampler arithmetic around a bf16 model, the bf16 CPU kernels, bf16 vs fp32 images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import perturb_
from diffusers.models.activations import GELU
from diffusers.models.attention_processor import AttnProcessor2_0

from chexgen.cli import main
from chexgen.diffusion.samplers import denoise, make_generators
from chexgen.errors import ChexgenError
from chexgen.models.dit import ChexGenDiT
from chexgen.models.kernels import ChexGenAttnProcessor, FusedGELU
from chexgen.models.precision import (
    ENV_CPU_BF16,
    cpu_bf16_fast,
    cpu_features,
    precision_name,
    resolve_precision,
)
from chexgen.pipelines import ChexGenPipeline

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "chexgen" / "assets" / "demo" / "pipeline"


def _machine_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# ----------------------------------------------------------------------------- detection
def test_cpuinfo_flags_are_read(tmp_path):
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile avx512_bf16\n")
    avx = tmp_path / "avx"
    avx.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    none = tmp_path / "none"
    none.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    a, b, c = cpu_features(str(amx)), cpu_features(str(avx)), cpu_features(str(none))
    assert a.amx_bf16 and a.avx512_bf16 and a.bf16 and a.source == str(amx)
    assert not b.amx_bf16 and b.avx512_bf16 and b.bf16
    assert not c.bf16 and not c.fp16
    assert cpu_bf16_fast(str(avx)) and not cpu_bf16_fast(str(none))


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs /proc/cpuinfo")
def test_auto_on_this_machine_follows_its_cpu_flags(monkeypatch):
    monkeypatch.delenv(ENV_CPU_BF16, raising=False)
    flags = _machine_flags()
    has = "amx_bf16" in flags or "avx512_bf16" in flags
    feats = cpu_features()
    assert feats.amx_bf16 == ("amx_bf16" in flags) and feats.avx512_bf16 == ("avx512_bf16" in flags)
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if has else torch.float32)
    assert resolve_precision(None) == resolve_precision("auto", "cpu")


def test_flag_forces_cpu_bf16_off_and_on(monkeypatch, caplog):
    from chexgen.models import precision

    monkeypatch.setattr(precision, "_NOTED", set())  # the note is once per process: other tests may have had it
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    with caplog.at_level(logging.INFO, logger="chexgen.models.precision"):
        assert resolve_precision("auto", "cpu") == torch.float32
    assert any(f"{ENV_CPU_BF16}=0" in r.message and "fp32" in r.message for r in caplog.records)
    assert resolve_precision("bf16", "cpu") == torch.bfloat16  # explicit choices are kept
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert resolve_precision("auto", "cpu") == torch.bfloat16
    monkeypatch.setenv(ENV_CPU_BF16, "maybe")
    with pytest.raises(ChexgenError, match=ENV_CPU_BF16):
        resolve_precision("auto", "cpu")


def test_names_and_errors():
    assert resolve_precision("fp32") == torch.float32 and resolve_precision("fp16") == torch.float16
    assert resolve_precision("bfloat16") == torch.bfloat16 and resolve_precision(torch.float16) == torch.float16
    assert [precision_name(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ChexgenError, match="unknown precision 'fp8'"):
        resolve_precision("fp8")
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "cuda") == torch.float32  # no GPU bf16 to use


# ----------------------------------------------------------------------------- pipelines
def test_pipeline_precision_and_fp32_sampler_arithmetic(tiny_pipeline, monkeypatch):
    pipe = tiny_pipeline
    assert pipe.precision == "fp32"
    ref = pipe(["left pleural effusion"], seed=3, num_inference_steps=3, progress=False).images
    pipe.to(precision="bf16")
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16 and pipe.precision == "bf16"
    seen = []
    forward = pipe.transformer.forward

    def spy(latents, *args, **kwargs):
        seen.append(latents.dtype)
        return forward(latents, *args, **kwargs)

    monkeypatch.setattr(pipe.transformer, "forward", spy)
    enc = pipe.encode_prompts(["left pleural effusion"])
    lat = pipe.sample_latents(enc, make_generators([3]), num_inference_steps=3)
    assert seen and set(seen) == {torch.bfloat16}  # the model computes in bf16 ...
    assert lat.dtype == torch.float32  # ... the sampler's latents stay fp32
    monkeypatch.undo()
    a = pipe(["left pleural effusion"], seed=3, num_inference_steps=3, progress=False).images
    b = pipe(["left pleural effusion"], seed=3, num_inference_steps=3, progress=False).images
    assert a.dtype == torch.float32 and torch.equal(a, b)  # same seed, same precision: same image
    assert not torch.equal(a, ref) and (a - ref).abs().mean() < 0.05
    pipe.to(precision="fp32")  # back to fp32 compute (the weights keep their bf16 rounding)
    assert pipe.transformer.dtype == torch.float32 and pipe.precision == "fp32"


def test_from_pretrained_precision(tiny_pipeline_dir, monkeypatch):
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    assert ChexGenPipeline.from_pretrained(tiny_pipeline_dir, precision="auto").precision == "fp32"
    monkeypatch.setenv(ENV_CPU_BF16, "1")
    assert ChexGenPipeline.from_pretrained(tiny_pipeline_dir, precision="auto").precision == "bf16"
    assert ChexGenPipeline.from_pretrained(tiny_pipeline_dir).precision == "fp32"  # the Python default
    with pytest.raises(ChexgenError, match="give one of them"):
        ChexGenPipeline.from_pretrained(tiny_pipeline_dir, precision="fp32", torch_dtype=torch.bfloat16)


def test_denoise_keeps_latents_fp32_around_a_bf16_model():
    torch.manual_seed(0)
    model = perturb_(ChexGenDiT(sample_size=4, patch_size=2, hidden_size=32, depth=1, num_heads=2,
                                caption_channels=8, max_text_len=5).eval(), std=0.03).to(torch.bfloat16)
    cond = (torch.randn(2, 5, 8).bfloat16(), torch.ones(2, 5, dtype=torch.long))
    uncond = (torch.randn(2, 5, 8).bfloat16(), torch.ones(2, 5, dtype=torch.long))
    for sampler in ("iddpm", "dpmsolver++", "euler_a"):
        out = denoise(model, cond, uncond, make_generators([1, 2]), (4, 4, 4), sampler, 4, dtype=torch.bfloat16)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.skipif(not (BUNDLED / "chexgen_config.json").is_file(), reason="bundled model not installed")
def test_bundled_model_bf16_and_fp32_images_of_a_seed_agree_to_the_documented_tolerance(one_thread):
    # docs/concepts/samplers-precision.md: every image Pearson r >= 0.85 and mean |difference| <= 0.1 of the
    # grey range; the median image within 0.015. (Measured on 64 prompts: 95 % of images r >= 0.99 and
    # <= 0.02, the worst r 0.89: an occasional trajectory drifts.)
    prompts = ["Moderate right pleural effusion.", "No acute cardiopulmonary process.", "Cardiomegaly.",
               "Small left pneumothorax."]
    p32 = ChexGenPipeline.from_pretrained(BUNDLED, precision="fp32")
    p16 = ChexGenPipeline.from_pretrained(BUNDLED, precision="bf16")
    for sampler, steps in (("iddpm", 8), ("dpmsolver++", 8), (p32.config.default_sampler, 8)):
        kw = dict(seed=7, sampler=sampler, num_inference_steps=steps, batch_size=4, progress=False)
        a = p32(prompts, **kw).images[:, 0].numpy()
        b = p16(prompts, **kw).images[:, 0].numpy()
        mae = np.abs(a - b).reshape(len(a), -1).mean(1)
        corr = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
        assert mae.max() <= 0.1 and np.median(mae) <= 0.015 and min(corr) >= 0.85, (sampler, mae, corr)
        assert mae.max() > 0  # it really computed in bf16


def test_generate_records_precision_and_flag_off(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CPU_BF16, "0")
    out = tmp_path / "auto"
    assert main(["generate", "x ray", "--model", str(tiny_pipeline_dir), "--out", str(out), "--steps", "2",
                 "--no-progress", "--precision", "auto"]) == 0
    assert json.loads((out / "generation.json").read_text())["precision"] == "fp32"
    out = tmp_path / "bf16"
    assert main(["generate", "x ray", "--model", str(tiny_pipeline_dir), "--out", str(out), "--steps", "2",
                 "--no-progress", "--precision", "bf16"]) == 0
    assert json.loads((out / "generation.json").read_text())["precision"] == "bf16"
    rec = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert rec["provenance"]["precision"] == "bf16"
    with pytest.raises(SystemExit):  # argparse lists the choices
        main(["generate", "x ray", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "bad"),
              "--precision", "fp8"])
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- kernels
def _block_model(seed=0):
    torch.manual_seed(seed)
    return perturb_(ChexGenDiT(sample_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4,
                               caption_channels=16, max_text_len=6).eval(), std=0.05)


def _inputs(b=3):
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(b, 4, 8, 8, generator=g), torch.tensor([10, 500, 900][:b])
    emb, mask = torch.randn(b, 6, 16, generator=g), torch.ones(b, 6, dtype=torch.long)
    mask[:, 4:] = 0
    return x, t, emb, mask


def test_fast_kernels_are_installed_without_changing_weights():
    model = _block_model()
    procs = {type(p) for p in model.backbone.attn_processors.values()}
    assert procs == {ChexGenAttnProcessor}
    assert all(type(m) is FusedGELU for m in model.modules() if isinstance(m, GELU))
    assert any(k.endswith("ff.net.0.proj.weight") for k in model.state_dict())  # diffusers' names kept


def test_fp32_path_is_bitwise_diffusers_and_bf16_path_is_close():
    model = _block_model()
    x, t, emb, mask = _inputs()
    with torch.no_grad():
        ours = model(x, t, emb, mask)
        model.backbone.set_attn_processor(AttnProcessor2_0())
        theirs = model(x, t, emb, mask)
        assert torch.equal(ours, theirs)  # fp32: diffusers' own SDPA processor runs
        bf = model.to(torch.bfloat16)
        sdpa16 = bf(x, t, emb, mask).float()
        bf.backbone.set_attn_processor(ChexGenAttnProcessor())
        math16 = bf(x, t, emb, mask).float()
    rel = lambda a: float((a - theirs).norm() / theirs.norm())  # noqa: E731
    assert rel(math16) < 0.03 and rel(sdpa16) < 0.03  # both bf16 paths: bf16 rounding only
    assert not torch.equal(math16, sdpa16)  # the two-matmul attention really ran


def test_fused_gelu_matches_and_trains_through_the_plain_path():
    lin = torch.nn.Linear(16, 32)
    plain = GELU(16, 32, approximate="tanh")
    plain.proj = lin
    fused = FusedGELU.from_module(plain)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(fused(x), plain(x))  # fp32: diffusers' module
        fused16, plain16 = fused.to(torch.bfloat16), plain.to(torch.bfloat16)
        a, b = fused16(x.bfloat16()).float(), plain16(x.bfloat16()).float()
        ref = torch.nn.functional.gelu(torch.nn.functional.linear(x, lin.weight.float(), lin.bias.float()),
                                       approximate="tanh")
    assert (a - ref).abs().max() < 0.05 and (b - ref).abs().max() < 0.05
    xg = x.bfloat16().requires_grad_()
    fused16(xg).sum().backward()  # autograd: the separate ops (the fused op has no backward)
    assert xg.grad is not None and torch.isfinite(xg.grad.float()).all()


def test_text_path_is_computed_once_per_loop_and_never_stale(tiny_pipeline, monkeypatch):
    from chexgen.models import kernels

    pipe = tiny_pipeline
    proj = pipe.transformer.backbone.caption_projection
    assert isinstance(proj, kernels.CachedTextProjection)
    calls = []
    hook = proj.linear_1.register_forward_hook(lambda *a: calls.append(1))
    kw = dict(seed=2, sampler="dpmsolver++", num_inference_steps=5, progress=False)
    cached = pipe(["left pleural effusion", "cardiomegaly"], **kw).images
    assert len(calls) == 1  # one caption projection for 5 steps
    monkeypatch.setattr(kernels._Memo, "get", lambda self, x, *w, compute: compute())
    fresh = pipe(["left pleural effusion", "cardiomegaly"], **kw).images
    assert len(calls) == 1 + 5 and torch.equal(cached, fresh)  # exact: the same products, once
    monkeypatch.undo()
    hook.remove()
    # the same text tensor with changed weights, or changed in place, is recomputed
    model = _block_model()
    x, t, emb, mask = _inputs()
    with torch.no_grad():
        a = model(x, t, emb, mask)
        model.backbone.transformer_blocks[0].attn2.to_k.weight.mul_(2)
        b = model(x, t, emb, mask)
        emb.mul_(0.5)
        c = model(x, t, emb, mask)
        model.backbone.transformer_blocks[0].attn2.to_k.weight.div_(2)
        emb.mul_(2)
        d = model(x, t, emb, mask)
    assert not torch.equal(a, b) and not torch.equal(b, c) and torch.allclose(a, d, atol=1e-6)


@pytest.mark.skipif(not (BUNDLED / "chexgen_config.json").is_file(), reason="bundled model not installed")
def test_bundled_model_stores_the_benchmarked_sampler_default_and_generate_uses_it(tmp_path):
    from chexgen.demo.pack import PACK_SAMPLER, PACK_STEPS

    stored = json.loads((BUNDLED / "chexgen_config.json").read_text())
    # benchmarks/sampler_quality.py --apply wrote these (the pack default follows the same measurement)
    assert (stored["default_sampler"], stored["num_inference_steps"]) == (PACK_SAMPLER, PACK_STEPS)
    out = tmp_path / "g"
    assert main(["generate", "Small left pleural effusion.", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "generation.json").read_text())
    assert (settings["sampler"], settings["steps"]) == (stored["default_sampler"], stored["num_inference_steps"])
    assert settings["precision"] == precision_name(resolve_precision("auto", "cpu"))
