"""The one generation engine: regression against the pre-redesign images, clipping on the control path,
the scheduler read back, resume that verifies, batch layout, sharding, streaming, locking and rejects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline, perturb_

from chexgen.cli import main
from chexgen.data.condition_sources import ConditionInput
from chexgen.data.conditions import LabelledMask
from chexgen.data.imageio import load_gray
from chexgen.data.manifest import Box, read_manifest
from chexgen.diffusion.samplers import denoise, make_generators
from chexgen.errors import ChexgenError
from chexgen.generation import ChexGenBackend, PromptItem, generate_to_folder, plan_images
from chexgen.models.controlnet import ChexGenControlNet
from chexgen.pipelines import ChexGenControlPipeline, ChexGenPipeline
from chexgen.pipelines.control import control_model_fn

BUNDLED = Path(__file__).resolve().parents[1] / "src" / "chexgen" / "assets" / "demo" / "pipeline"
REFERENCE = Path(__file__).resolve().parent / "data" / "bundled_text_reference.npy"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _recorder():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "record_bundled_reference.py"
    spec = importlib.util.spec_from_file_location("record_bundled_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_model_text_images_are_bitwise_those_recorded():
    # First recorded with the pre-redesign ChexGenPipeline (commit e3b7645: the engine redesign kept every
    # pixel); re-recorded by scripts/record_bundled_reference.py only when the bundled weights change.
    recorder = _recorder()
    meta = json.loads(REFERENCE.with_suffix(".json").read_text())
    assert recorder.weights_sha256() == meta["transformer_sha256"], (
        "the bundled transformer weights changed: re-record with scripts/record_bundled_reference.py")
    assert recorder.weights_sha256(part="vae") == meta["vae_sha256"], (
        "the bundled VAE weights changed: re-record with scripts/record_bundled_reference.py")
    assert meta["sampler"] == "iddpm" and meta["num_inference_steps"] == 8  # the recording's settings
    images = recorder.render()  # fp32, 2 threads, denormals kept: the numeric environment of the recording
    assert np.array_equal(images, np.load(REFERENCE))


@pytest.fixture(scope="module")
def control_pipes(tiny_t5_dir):
    base = make_tiny_pipeline(tiny_t5_dir, depth=2)
    adapter = ChexGenControlNet.from_transformer(base.transformer, num_blocks=1)
    perturb_(adapter, std=0.1, seed=5)
    return base, ChexGenControlPipeline(base, adapter)


def _conditions(n=3):
    out = []
    for i in range(n):
        mask = np.zeros((64, 64), bool)
        mask[4 + i:30, 36:60 - i] = True
        out.append(ConditionInput(f"c{i}", 64, 64, masks=[LabelledMask("Pneumothorax", mask)],
                                  boxes=[Box("Nodule", 8, 8, 24 + i, 24)]))
    return out


@pytest.mark.parametrize("sampler", ["ddim", "iddpm", "dpmsolver++"])
def test_control_path_clips_latents_like_the_text_path(control_pipes, sampler):
    base, cpipe = control_pipes
    conds = _conditions(2)
    kw = dict(sampler=sampler, num_inference_steps=3, guidance_scale=3.0, progress=False, seed=11)
    base.config.clip_latents = None
    free = cpipe(["Left pneumothorax."], conds, **kw).images
    base.config.clip_latents = 0.3
    try:
        clipped = cpipe(["Left pneumothorax."], conds, **kw).images
        # explicit reference: the sampler loop with the model's clipping and the control residuals bound
        enc = base.encode_prompts(["Left pneumothorax."] * 2)
        control = cpipe.encode_conditions(cpipe.render_all(conds))
        model = control_model_fn(base.transformer, cpipe.controlnet, control, 1.0)
        null = base.transformer.null_text(2, mask_like=enc.mask)
        latents = denoise(model, (enc.embeddings, enc.mask), null, make_generators([11, 12]), base.latent_shape,
                          sampler=sampler, num_inference_steps=3, guidance_scale=3.0, clip_latents=0.3)
        reference = base.vae.decode(latents).float()
    finally:
        base.config.clip_latents = None
    assert torch.allclose(clipped, reference, atol=1e-6)
    assert (clipped - free).abs().max() > 1e-3  # clipping at 0.3 changes these samples


def test_control_at_zero_scale_samples_like_the_text_pipeline(control_pipes):
    base, cpipe = control_pipes
    out = cpipe(["Right effusion."], _conditions(2), conditioning_scale=0.0, num_inference_steps=3, seed=4,
                progress=False)
    text = base(["Right effusion."], num_images_per_prompt=2, num_inference_steps=3, seed=4, progress=False)
    assert torch.allclose(out.images, text.images, atol=1e-6)


def test_scheduler_config_is_read_back(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "p")
    cfg_path = tmp_path / "p" / "scheduler" / "scheduler_config.json"
    saved = json.loads(cfg_path.read_text())
    assert saved["beta_end"] == pytest.approx(0.02)
    same = ChexGenPipeline.from_pretrained(tmp_path / "p")
    kw = dict(num_inference_steps=3, seed=1, progress=False, sampler="ddim")
    a = same(["x"], **kw).images
    saved["beta_end"] = 0.03
    cfg_path.write_text(json.dumps(saved))
    edited = ChexGenPipeline.from_pretrained(tmp_path / "p")
    assert edited.noise_schedule.beta_end == pytest.approx(0.03)
    assert (edited(["x"], **kw).images - a).abs().max() > 1e-4
    saved["beta_schedule"] = "scaled_linear"
    cfg_path.write_text(json.dumps(saved))
    with pytest.raises(ChexgenError, match="beta_schedule"):
        ChexGenPipeline.from_pretrained(tmp_path / "p")


@pytest.mark.parametrize("bad", [dict(guidance_scale=float("nan")), dict(guidance_scale=float("inf")),
                                 dict(guidance_scale=-1.0), dict(num_inference_steps=0), dict(sampler="lms"),
                                 dict(num_inference_steps=2.5)])
def test_one_rule_refuses_bad_numbers_for_both_pipelines(control_pipes, bad):
    base, cpipe = control_pipes
    with pytest.raises(ChexgenError):
        base(["x"], progress=False, **bad)
    with pytest.raises(ChexgenError):
        cpipe(["x"], _conditions(1), progress=False, **bad)


def _backend(pipe, control=None, steps=2):
    return ChexGenBackend(pipe, pipe.sampling_settings(num_inference_steps=steps), control=control)


def _pixels(folder):
    return {p.name: load_gray(p) for p in sorted((Path(folder) / "images").iterdir())}


def test_resume_redoes_truncated_and_missing_images_in_their_batch(tiny_pipeline, tmp_path):
    items = [PromptItem(f"finding {i}") for i in range(4)]
    out = tmp_path / "run"
    first = generate_to_folder(_backend(tiny_pipeline), items, out, num_images_per_prompt=2, batch_size=3,
                               progress=False)
    assert first.generated == 8
    before = _pixels(out)
    (out / "images" / "syn-000001-000.png").write_bytes(b"")  # 0-byte file
    blob = (out / "images" / "syn-000002-001.png").read_bytes()
    (out / "images" / "syn-000002-001.png").write_bytes(blob[: len(blob) // 2])  # truncated
    (out / "images" / "syn-000003-001.png").unlink()  # deleted
    (out / "images" / ".syn-000003-001.png.0a1b2c3d.png").write_bytes(blob[:10])  # a killed write's temp file
    # a different batch size on resume: the run's own layout (3) is used, so pixels match exactly
    again = generate_to_folder(_backend(tiny_pipeline), items, out, num_images_per_prompt=2, batch_size=5,
                               progress=False)
    assert (again.generated, again.skipped) == (3, 5)
    after = _pixels(out)
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)
    assert len(read_manifest(out / "manifest.jsonl")) == 8
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_same_seed_other_batch_size_within_one_grey_level(tiny_pipeline, tmp_path):
    items = [PromptItem(f"opacity {i}") for i in range(6)]
    generate_to_folder(_backend(tiny_pipeline), items, tmp_path / "b1", batch_size=1, progress=False)
    generate_to_folder(_backend(tiny_pipeline), items, tmp_path / "b4", batch_size=4, progress=False)
    a, b = _pixels(tmp_path / "b1"), _pixels(tmp_path / "b4")
    assert a.keys() == b.keys()
    assert max(np.abs(a[k] - b[k]).max() for k in a) <= 1 / 255 + 1e-7


def test_control_generation_streams_writes_and_resumes(control_pipes, tmp_path):
    base, cpipe = control_pipes
    conds = _conditions(3)
    out = tmp_path / "ctrl"
    res = generate_to_folder(_backend(base, cpipe), [PromptItem("Left pneumothorax.")], out, conditions=conds,
                             num_images_per_prompt=2, batch_size=4, progress=False)
    assert res.generated == 6
    recs = read_manifest(out / "manifest.jsonl")
    assert [r.id for r in recs] == [p.id for p in plan_images([PromptItem("x")], 2, 0, conds)]
    assert [r.provenance["seed"] for r in recs] == list(range(6))
    assert all((out / r.masks[0].path).is_file() and (out / r.extra["condition_image"]).is_file() for r in recs)
    coco = json.loads((out / "boxes.coco.json").read_text())
    assert len(coco["images"]) == 6 and len(coco["annotations"]) == 6
    before = _pixels(out)
    (out / "images" / "syn-000002-000.png").unlink()
    again = generate_to_folder(_backend(base, cpipe), [PromptItem("Left pneumothorax.")], out, conditions=conds,
                               num_images_per_prompt=2, batch_size=4, progress=False)
    assert (again.generated, again.skipped) == (1, 5)
    after = _pixels(out)
    assert all(np.array_equal(after[k], before[k]) for k in before)


def _peak_python_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_images(tiny_t5_dir, tmp_path):
    base = make_tiny_pipeline(tiny_t5_dir, resolution=128, depth=2)
    cpipe = ChexGenControlPipeline(base, ChexGenControlNet.from_transformer(base.transformer, num_blocks=1))
    conds = _conditions(2)
    sizes = {}
    for n in (2, 24):
        def run(n=n):
            generate_to_folder(_backend(base, cpipe, steps=1), [PromptItem("Effusion.")], tmp_path / f"n{n}",
                               conditions=conds, num_images_per_prompt=n, batch_size=2, progress=False)
        sizes[n] = _peak_python_bytes(run)
    # Holding 44 more 128 px images and drawn conditions (float32) would take 44 x 2 x 64 KiB = 5.5 MiB; what
    # grows is only the plan and the manifest records (a few KiB per image).
    assert sizes[24] - sizes[2] < 44 * 2 * 65536 / 8, sizes


def _boxes_csv(path, n=5, bad=False):
    rows = [f"case{i},Nodule,{2 + i},4,{14 + i},16,32,32" for i in range(n)]
    if bad:
        rows += ["badnum,Nodule,x,4,10,10,32,32", "flat,Nodule,5,5,5,20,32,32"]
    path.write_text("image_id,label,x0,y0,x1,y1,width,height\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def control_dirs(tmp_path_factory, control_pipes):
    base, cpipe = control_pipes
    root = tmp_path_factory.mktemp("ctrl_dirs")
    base.save_pretrained(root / "base")
    cpipe.controlnet.save_pretrained(str(root / "ctrl"))
    (root / "ctrl" / "control_info.json").write_text(json.dumps({"base_model": str(root / "base")}))
    return root


def test_bad_condition_rows_are_rejected_and_the_rest_generated(control_dirs, tmp_path, capsys):
    boxes = _boxes_csv(tmp_path / "b.csv", n=2, bad=True)
    out = tmp_path / "o"
    code = main(["generate", "Right nodule.", "--model", str(control_dirs / "base"), "--control-model",
                 str(control_dirs / "ctrl"), "--boxes", str(boxes), "--out", str(out), "--steps", "1", "--no-progress"])
    assert code == 1
    assert len(read_manifest(out / "manifest.jsonl")) == 2
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rejects} == {"badnum", "flat"}
    assert any(f"{boxes}: line 4" in r["where"] for r in rejects)  # names the file and line
    assert "rejected 2 condition(s)" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [(["--guidance", "nan"], "finite"), (["--guidance", "inf"], "finite"),
                                         (["--steps", "-3"], ">= 1"), (["--conditioning-scale", "nan"], "finite")])
def test_non_finite_or_negative_numbers_refused_before_writing(control_dirs, tmp_path, capsys, args, match):
    boxes = _boxes_csv(tmp_path / "b.csv", n=1)
    out = tmp_path / "o"
    code = main(["generate", "x", "--model", str(control_dirs / "base"), "--control-model", str(control_dirs / "ctrl"),
                 "--boxes", str(boxes), "--out", str(out), "--no-progress", *args])
    assert code == 2 and match in capsys.readouterr().err and not out.exists()


def _generate_cmd(control_dirs, boxes, out, *extra):
    return [sys.executable, "-m", "chexgen.cli", "generate", "Left pneumothorax.", "--model",
            str(control_dirs / "base"), "--control-model", str(control_dirs / "ctrl"), "--boxes", str(boxes),
            "--out", str(out), "--device", "cpu", "--no-progress", *extra]


def test_control_run_killed_and_rerun_equals_an_uninterrupted_one(control_dirs, tmp_path):
    boxes = _boxes_csv(tmp_path / "b.csv", n=8)
    opts = ["--steps", "40", "--batch-size", "2", "-n", "2"]
    full = tmp_path / "full"
    assert subprocess.run(_generate_cmd(control_dirs, boxes, full, *opts), env=ENV, capture_output=True,
                          timeout=300).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(_generate_cmd(control_dirs, boxes, out, *opts), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "images").is_dir() and len(list((out / "images").glob("*.png"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    killed_early = proc.returncode == -signal.SIGKILL
    res = subprocess.run(_generate_cmd(control_dirs, boxes, out, *opts), env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _pixels(full), _pixels(out)
    assert a.keys() == b.keys() and len(a) == 16
    assert all(np.array_equal(a[k], b[k]) for k in a)
    ids = [r.id for r in read_manifest(out / "manifest.jsonl")]
    assert len(ids) == len(set(ids)) == 16
    assert killed_early, "the run finished before it could be killed; make it longer"


def test_two_processes_shard_conditions_without_gap_or_duplicate(control_dirs, tmp_path):
    boxes = _boxes_csv(tmp_path / "b.csv", n=5)
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           *_generate_cmd(control_dirs, boxes, out, "--steps", "2", "--batch-size", "2")[2:]]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = read_manifest(out / "manifest.jsonl")
    assert [r.extra["condition_id"] for r in recs] == [f"case{i}" for i in range(5)]
    assert len({r.id for r in recs}) == 5 and len(list((out / "images").iterdir())) == 5
    single = tmp_path / "single"
    assert subprocess.run(_generate_cmd(control_dirs, boxes, single, "--steps", "2", "--batch-size", "2"),
                          env=ENV, capture_output=True, timeout=300).returncode == 0
    a, b = _pixels(out), _pixels(single)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same batch layout -> same pixels


def test_two_identical_runs_into_one_folder_do_the_work_once(tiny_pipeline_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"finding {i}" for i in range(6)) + "\n")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "chexgen.cli", "generate", "--model", str(tiny_pipeline_dir), "--prompts",
           str(prompts), "--out", str(out), "--steps", "30", "--device", "cpu", "--no-progress"]
    out.mkdir()
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    generated = [int(o[0].split("generated ")[1].split(" ")[0]) for o in outs]
    assert sum(generated) == 6 and len(list((out / "images").iterdir())) == 6
