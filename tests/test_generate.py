"""``chexgen generate``: outputs, provenance, resume, prompt files, bad input, multi-process sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from chexgen.cli import main
from chexgen.data.imageio import load_gray, read_png_text
from chexgen.data.manifest import Record, read_manifest, write_manifest
from chexgen.generation import PromptItem, plan_images, read_prompts, shard

FAST = ["--steps", "2", "--no-progress"]


def _gen(model, out, *extra):
    return main(["generate", "--model", str(model), "--out", str(out), *FAST, *extra])


def test_generate_writes_marked_pngs_and_manifest_then_resumes(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _gen(tiny_pipeline_dir, out, "--prompt", "left effusion", "--prompt", "normal", "-n", "2",
                "--batch-size", "3", "--seed", "5") == 0
    recs = read_manifest(out / "manifest.jsonl")
    assert [r.id for r in recs] == ["syn-000000-000", "syn-000000-001", "syn-000001-000", "syn-000001-001"]
    assert [r.provenance["seed"] for r in recs] == [5, 6, 7, 8]
    r = recs[2]
    assert r.synthetic and r.impression == "normal" and r.width == 32
    prov = r.provenance
    assert prov["prompt"] == "normal" and prov["sampler"] == "ddim" and prov["steps"] == 2
    assert prov["guidance"] == 4.0 and len(prov["checkpoint_sha256"]) == 64 and prov["chexgen_version"]
    png = out / r.image
    with Image.open(png) as im:
        assert im.mode == "L" and im.size == (32, 32)
    text = read_png_text(png)
    assert text["chexgen:synthetic"] == "true" and json.loads(text["chexgen:provenance"])["seed"] == 7

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    before = load_gray(out / "images" / "syn-000001-001.png")
    (out / "images" / "syn-000001-001.png").unlink()
    capsys.readouterr()
    assert _gen(tiny_pipeline_dir, out, "--prompt", "left effusion", "--prompt", "normal", "-n", "2",
                "--batch-size", "3", "--seed", "5") == 0
    assert "generated 1 image(s), skipped 3" in capsys.readouterr().out
    for p in (out / "images").iterdir():
        if p.name != "syn-000001-001.png":
            assert p.stat().st_mtime_ns == stamps[p.name]  # not rewritten
    assert np.array_equal(load_gray(out / "images" / "syn-000001-001.png"), before)  # same seed, same image
    assert len(read_manifest(out / "manifest.jsonl")) == 4
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp leftovers


def test_sixteen_bit_and_settings_mismatch(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "o16"
    assert _gen(tiny_pipeline_dir, out, "--prompt", "cardiomegaly", "--bits", "16") == 0
    with Image.open(out / "images" / "syn-000000-000.png") as im:
        assert im.mode.startswith("I")  # 16-bit gray
    capsys.readouterr()
    assert _gen(tiny_pipeline_dir, out, "--prompt", "cardiomegaly", "--bits", "16", "--guidance", "2") == 2
    err = capsys.readouterr().err.strip()
    assert "different settings" in err and "guidance" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["--preset", "xl3", "--prompt", "x"], "unknown preset"),
        (["--model", "{tmp}/missing", "--prompt", "x"], "does not exist"),
        (["--prompts", "{tmp}/nope.txt"], "does not exist"),
        (["--prompts", "{tmp}/bad.csv", "--column", "text"], "empty prompt"),
        (["--prompts", "{tmp}/bin.txt"], "cannot read"),
        (["--prompt", "  "], "empty"),
        (["--prompt", "x", "--sampler", "lms"], "unknown sampler"),
    ],
)
def test_bad_input_one_line_nonzero_nothing_written(tiny_pipeline_dir, tmp_path, capsys, args, match):
    (tmp_path / "bad.csv").write_text("id,text\n1,effusion\n2,\n", encoding="utf-8")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--model" not in args and "--preset" not in args:
        args += ["--model", str(tiny_pipeline_dir)]
    out = tmp_path / "out"
    code = main(["generate", "--out", str(out), *FAST, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and err.startswith("chexgen generate: error:") and match in err


def test_positional_prompt_and_control_options_present(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "pos"
    assert main(["generate", "Small left pleural effusion.", "--model", str(tiny_pipeline_dir), "--out", str(out),
                 *FAST]) == 0
    assert read_manifest(out / "manifest.jsonl")[0].impression == "Small left pleural effusion."
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--control-model" in capsys.readouterr().out


def test_missing_demo_model_error_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    import chexgen.assets

    monkeypatch.setattr(chexgen.assets, "demo_model_dir", lambda: tmp_path / "no-demo")
    assert main(["generate", "--prompt", "x", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "convert-official" in err and not (tmp_path / "o").exists()


def test_prompt_file_formats(tmp_path):
    (tmp_path / "p.txt").write_text("normal\n\n  left effusion  \n", encoding="utf-8")
    assert [i.prompt for i in read_prompts(tmp_path / "p.txt")] == ["normal", "left effusion"]
    (tmp_path / "p.csv").write_text('id,report\n1,"mild, stable cardiomegaly"\n2,normal\n', encoding="utf-8")
    assert [i.prompt for i in read_prompts(tmp_path / "p.csv", column="report")] == ["mild, stable cardiomegaly",
                                                                                      "normal"]
    with pytest.raises(Exception, match="no column 'prompt'"):
        read_prompts(tmp_path / "p.csv")
    (tmp_path / "p.json").write_text(json.dumps(["a", {"prompt": "b"}]), encoding="utf-8")
    assert [i.prompt for i in read_prompts(tmp_path / "p.json")] == ["a", "b"]
    (tmp_path / "p.jsonl").write_text('"a"\n{"text": "b"}\n', encoding="utf-8")
    assert [i.prompt for i in read_prompts(tmp_path / "p.jsonl", column="text")[1:]] == ["b"]
    with pytest.raises(Exception, match=r"p\.jsonl: line 2: no field 'prompt'"):
        read_prompts(tmp_path / "p.jsonl")
    write_manifest(tmp_path / "m.jsonl", [
        Record(id="r1", impression="small left pneumothorax", sex="M", age=71.0, labels={"Pneumothorax": 1}),
        Record(id="r2", report="FINDINGS: clear lungs."),
    ])
    items = read_prompts(tmp_path / "m.jsonl", manifest=True)
    assert [i.prompt for i in items] == ["small left pneumothorax", "FINDINGS: clear lungs."]
    assert items[0].source.labels["Pneumothorax"] == 1
    # an object-per-line manifest is recognised even without --manifest
    assert read_prompts(tmp_path / "m.jsonl")[0].source.id == "r1"


def test_manifest_prompts_carry_labels_into_synthetic_records(tiny_pipeline_dir, tmp_path):
    write_manifest(tmp_path / "m.jsonl", [
        Record(id="r1", impression="small left pneumothorax", sex="F", age=40.0, labels={"Pneumothorax": 1}),
    ])
    out = tmp_path / "out"
    assert _gen(tiny_pipeline_dir, out, "--prompts", str(tmp_path / "m.jsonl"), "--manifest") == 0
    (rec,) = read_manifest(out / "manifest.jsonl")
    assert rec.labels["Pneumothorax"] == 1 and rec.sex == "F" and rec.extra["source_id"] == "r1"


def test_shard_is_disjoint_and_covering():
    plan = plan_images([PromptItem(str(i)) for i in range(7)], 3, seed=0)
    for world in (1, 2, 3, 5):
        parts = [shard(plan, r, world) for r in range(world)]
        ids = [p.id for part in parts for p in part]
        assert sorted(ids) == sorted(p.id for p in plan) and len(set(ids)) == len(plan)


def test_two_process_cpu_run_shards_without_duplicates_or_gaps(tiny_pipeline_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(f"finding number {i}" for i in range(5)) + "\n", encoding="utf-8")
    out = tmp_path / "multi"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # torchrun (= what `accelerate launch --multi_gpu` runs); `accelerate launch --cpu` starts ONE process.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "chexgen.cli", "generate",
           "--model", str(tiny_pipeline_dir), "--prompts", str(prompts), "-n", "2", "--batch-size", "2",
           "--device", "cpu", "--out", str(out), *FAST]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # 10 images in batches of 2: batches 0, 2, 4 go to process 1 and batches 1, 3 to process 2
    assert "process 1/2: generated 6 image(s)" in res.stdout and "process 2/2: generated 4 image(s)" in res.stdout
    recs = read_manifest(out / "manifest.jsonl")
    ids = [r.id for r in recs]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert ids == [p.id for p in plan_images([PromptItem(str(i)) for i in range(5)], 2, 0)]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in ids)
    # an image depends only on its seed: a single-process run gives the same pixels
    single = tmp_path / "single"
    assert _gen(tiny_pipeline_dir, single, "--prompts", str(prompts), "-n", "2", "--batch-size", "4") == 0
    for i in (ids[0], ids[3], ids[9]):
        a = load_gray(out / "images" / f"{i}.png")
        b = load_gray(single / "images" / f"{i}.png")
        assert np.abs(a - b).max() <= 1 / 255 + 1e-6
