"""`chexgen demo` end to end on a tiny random model (the bundled model is exercised by benchmarks/demo_quality.py)."""

import json

import numpy as np
import pytest
from conftest import make_tiny_pipeline

from chexgen.cli import main
from chexgen.data.imageio import read_png_text
from chexgen.data.manifest import read_manifest
from chexgen.demo import DemoConfig, bundled_model_dir, nlmcxr_prompts, pack_demo_model, run_demo
from chexgen.downstream.classifier import save_classifier
from chexgen.downstream.models import ModelSpec, build_model
from chexgen.errors import ChexgenError

CLASSES = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory, tiny_t5_dir):
    import torch

    from chexgen.models.controlnet import ChexGenControlNet

    root = tmp_path_factory.mktemp("demo_model")
    pipe = make_tiny_pipeline(tiny_t5_dir, resolution=64, depth=2)
    pipe.save_pretrained(root / "pipeline")
    # an adapter with non-zero (random) weights, so that it changes the images; base named relative to itself
    adapter = ChexGenControlNet.from_transformer(pipe.transformer, num_blocks=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    adapter.save_pretrained(str(root / "control"), safe_serialization=True)
    (root / "control" / "control_info.json").write_text(json.dumps({"base_model": "../pipeline"}))
    # the model's own sampling defaults (not PipelineConfig's), which the demo must use when none is given
    cfg_path = root / "pipeline" / "chexgen_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(default_sampler="dpmsolver++sde", num_inference_steps=3)
    cfg_path.write_text(json.dumps(cfg))
    spec = ModelSpec(task="classification", num_outputs=len(CLASSES), image_size=64, arch="densenet-tiny",
                     init="scratch")
    model, _ = build_model(spec)
    save_classifier(model, spec, CLASSES, root / "classifier", {"init": "scratch"})
    (root / "prevalence.yaml").write_text("Cardiomegaly: 0.4\nPleural Effusion: 0.4\nPneumothorax: 0.4\nmax_findings: 2\n")
    return root


def test_demo_writes_report_images_and_metrics(tmp_path, demo_model):
    out = tmp_path / "demo"
    code = main(["demo", "--model", str(demo_model), "--out", str(out), "--n-heldout", "10", "--images-per-prompt", "2",
                 "--n-nlmcxr", "2", "--bootstrap", "20", "--workers", "1", "--no-progress",
                 "--n-control-masks", "1", "--n-control-boxes", "1", "--control-images", "2"])
    assert code == 0
    html = (out / "report.html").read_text()
    assert "<table" in html and html.count("data:image/png;base64,") >= 3
    assert "Showcase" in html and "NLMCXR" in html
    assert "Demo summary" in html and "Spatial control" in html and "SIIM-ACR mask" in html and "NIH box" in html
    metrics = json.loads((out / "metrics.json").read_text())
    demo = metrics["demo"]
    assert demo["n_real"] == 10 and demo["n_generated"] == 10
    assert demo["config"]["guidance"] == 4.0  # the model's own default when --guidance is not given
    # the sampler and steps stored in the model folder, used for every part of the demo
    assert (demo["config"]["sampler"], demo["config"]["steps"]) == ("dpmsolver++sde", 3)
    assert set(demo["auroc_real_per_class"]) == set(CLASSES)
    assert np.isfinite(demo["fid_real_vs_generated"]) and np.isfinite(demo["fid_real_half_vs_half"])
    # a random generator is far from the real phantom images; two halves of the real set are close
    assert demo["fid_real_vs_generated"] > demo["fid_real_half_vs_half"]
    syn = read_manifest(out / "synthetic_manifest.jsonl")
    paired = [r for r in syn if r.id.startswith("paired_")]
    assert len(paired) == 10 and all(r.synthetic and r.extra["source_id"].startswith("phantom_") for r in paired)
    assert len([r for r in syn if r.id.startswith("nlmcxr_")]) == 4
    # spatial control from real torchxrayvision annotations, drawn with and without the adapter
    control = demo["control"]
    sources = [e["source"] for e in control["examples"]]
    assert sources.count("SIIM-ACR mask") == 1 and sources.count("NIH box") == 1
    for e in control["examples"]:
        assert 0 < e["area_fraction"] < 1 and np.isfinite(e["localisation_ratio"]) and e["label"] in CLASSES
        # against the adapter shown a blank condition: a different reference, so a different ratio
        assert np.isfinite(e["condition_localisation_ratio"]) and e["blank_condition_change"] > 0
        assert e["condition_localisation_ratio"] != e["localisation_ratio"]
    assert control["examples"][0]["label"] == "Pneumothorax" and "pneumothorax" in control["examples"][0]["prompt"]
    controlled = [r for r in syn if r.id.startswith("control_")]
    assert len(controlled) == 2 * 2
    for r in controlled:
        assert (out / r.extra["condition_image"]).is_file() and sum(r.labels.values()) == 1
        assert "torchxrayvision" in r.extra["condition_source"] and r.provenance["control_model"].endswith("control")
    text = read_png_text(out / paired[0].image)  # the one marking scheme of every synthetic PNG
    prov = json.loads(text["chexgen:provenance"])
    assert text["chexgen:synthetic"] == "true" and prov["prompt"] == paired[0].impression
    assert prov == paired[0].provenance and prov["backend"] == "chexgen" and prov["seed"] == 0
    assert (prov["sampler"], prov["steps"]) == ("dpmsolver++sde", 3) and prov["precision"] in ("fp32", "bf16")
    assert all((r.provenance["sampler"], r.provenance["steps"]) == ("dpmsolver++sde", 3) for r in controlled)


def test_nlmcxr_prompts_are_real_and_within_trained_findings():
    recs = nlmcxr_prompts(3, ["Cardiomegaly", "Pleural Effusion"], seed=1)
    assert len(recs) == 3
    for r in recs:
        assert r.impression and len(r.impression.split()) <= 25
        assert {k for k, v in r.labels.items() if v == 1} <= {"No Finding", "Cardiomegaly", "Pleural Effusion"}


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ChexgenError, match="not a chexgen pipeline folder"):
        run_demo(DemoConfig(out=str(tmp_path / "o"), model=str(tmp_path)))
    assert not (tmp_path / "o").exists()
    assert main(["demo", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")]) == 2
    assert bundled_model_dir().name == "demo"


def test_pack_stores_half_precision_and_reloads(tmp_path, demo_model):
    import torch

    from chexgen.downstream.classifier import load_classifier
    from chexgen.pipelines import ChexGenPipeline

    dest = tmp_path / "packed"
    code = main(["demo", "--pack-pipeline", str(demo_model / "pipeline"), "--pack-classifier",
                 str(demo_model / "classifier"), "--pack-prevalence", str(demo_model / "prevalence.yaml"),
                 "--pack-to", str(dest), "--pack-control", str(demo_model / "control"), "--guidance", "6.5"])
    assert code == 0
    from safetensors.torch import load_file

    weights = load_file(str(dest / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    a = ChexGenPipeline.from_pretrained(demo_model / "pipeline")
    b = ChexGenPipeline.from_pretrained(dest / "pipeline")
    assert next(b.transformer.parameters()).dtype == torch.float32  # computes in fp32 after loading fp16
    from chexgen.demo.pack import PACK_SAMPLER, PACK_STEPS

    assert (b.config.clip_latents, b.config.default_sampler, b.config.num_inference_steps) == (5.0, PACK_SAMPLER,
                                                                                             PACK_STEPS)
    assert b.config.guidance_scale == 6.5  # the demo and `chexgen generate` use it when no --guidance is given
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(a.vae.encode(x), b.vae.encode(x), atol=2e-2)
        assert torch.allclose(load_classifier(demo_model / "classifier")(x)["scores"],
                              load_classifier(dest / "classifier")(x)["scores"], atol=1e-2)
    assert (dest / "prevalence.yaml").read_text() == (demo_model / "prevalence.yaml").read_text()
    # no path of the packing machine is stored; the schedule is a plain diffusers record of the training schedule
    configs = sorted(dest.rglob("config.json"))
    assert configs and not any("_name_or_path" in json.loads(c.read_text()) for c in configs)
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_pretrained(str(dest / "pipeline" / "scheduler"))
    assert sched.config.variance_type == "learned_range" and sched.config.num_train_timesteps == 1000
    assert np.allclose(sched.betas.numpy(), b.noise_schedule.betas)

    # the adapter: fp16, its base named relative to itself, loadable without naming the base
    from chexgen.pipelines.control import ChexGenControlPipeline

    adapter = load_file(str(dest / "control" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in adapter.values()} == {torch.float16}
    packed = json.loads((dest / "control" / "control_info.json").read_text())
    from chexgen.pipelines.control import ControlInfo

    assert packed["base_model"] == "../pipeline" and set(packed) == set(ControlInfo.__dataclass_fields__)
    cpipe = ChexGenControlPipeline.from_pretrained(dest / "control")
    assert cpipe.base.source_path.resolve() == (dest / "pipeline").resolve()

    # an adapter trained on other base weights is refused, and the destination is left as it was
    info = json.loads((demo_model / "control" / "control_info.json").read_text())
    other = tmp_path / "other_control"
    import shutil

    shutil.copytree(demo_model / "control", other)
    (other / "control_info.json").write_text(json.dumps({**info, "base_checkpoint_sha256": "0" * 64}))
    before = sorted(p.name for p in dest.rglob("*"))
    with pytest.raises(ChexgenError, match="trained on base weights"):
        pack_demo_model(demo_model / "pipeline", demo_model / "classifier", demo_model / "prevalence.yaml", dest,
                        control_dir=other)
    assert sorted(p.name for p in dest.rglob("*")) == before


def test_pack_vae_takes_a_new_decoder_and_refuses_a_new_encoder(tmp_path, demo_model):
    import copy

    import torch

    from chexgen.pipelines import ChexGenPipeline

    base = ChexGenPipeline.from_pretrained(demo_model / "pipeline")
    tuned = copy.deepcopy(base.vae)
    with torch.no_grad():
        for p in tuned.autoencoder.decoder.parameters():
            p.add_(0.01)
    tuned.save_pretrained(tmp_path / "decoder-tuned")
    dest = tmp_path / "packed"
    args = ["demo", "--pack-pipeline", str(demo_model / "pipeline"), "--pack-classifier", str(demo_model / "classifier"),
            "--pack-prevalence", str(demo_model / "prevalence.yaml"), "--pack-control", str(demo_model / "control")]
    assert main(args + ["--pack-to", str(dest), "--pack-vae", str(tmp_path / "decoder-tuned")]) == 0
    packed = ChexGenPipeline.from_pretrained(dest / "pipeline")
    z = torch.randn(1, *base.latent_shape)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(packed.vae.decode(z), tuned.decode(z), atol=1e-2)
        assert not torch.allclose(packed.vae.decode(z), base.vae.decode(z), atol=1e-3)
        assert torch.allclose(packed.vae.encode(x), base.vae.encode(x), atol=2e-2)
    assert packed.vae.scaling_factor == base.vae.scaling_factor

    other = copy.deepcopy(base.vae)
    with torch.no_grad():
        next(other.autoencoder.encoder.parameters()).add_(0.01)
    other.save_pretrained(tmp_path / "encoder-changed")
    assert main(args + ["--pack-to", str(tmp_path / "refused"), "--pack-vae", str(tmp_path / "encoder-changed")]) == 2
    assert not (tmp_path / "refused").exists()
