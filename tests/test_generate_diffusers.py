"""``chexgen generate --model DIR`` with diffusers pipelines: tiny random Stable Diffusion and PixArt-alpha
pipelines built here; gray PNGs, provenance, seeds independent of the batch, resume, templates, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _diffusers_models import make_tiny_pixart_pipeline, make_tiny_sd_pipeline
from PIL import Image

from chexgen.cli import main
from chexgen.data.imageio import load_gray, read_png_text
from chexgen.data.manifest import Record, read_manifest, write_manifest
from chexgen.generation import PromptItem
from chexgen.generation.backends.diffusers import rgb_to_gray
from chexgen.generation.templates import apply_template, parse_template

FAST = ["--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.fixture(scope="module")
def pixart_dir(tmp_path_factory, tiny_t5_dir):
    return make_tiny_pixart_pipeline(tmp_path_factory.mktemp("pixart") / "pipe", tiny_t5_dir)


def _manifest(path):
    recs = [Record(id="a", sex="F", age=50.0, race="White", impression="Normal chest radiograph."),
            Record(id="b", sex="M", age=71.9, race="Black", impression="Small left pleural effusion.")]
    write_manifest(path, recs)
    return path


def test_stable_diffusion_folder_gray_pngs_provenance_batch_independent_seeds_and_resume(sd_dir, tmp_path, capsys,
                                                                                           one_thread):
    args = ["--prompt", "left effusion", "--prompt", "normal", "-n", "2", "--seed", "3", "--precision", "fp32", *FAST]
    one, four = tmp_path / "b1", tmp_path / "b4"
    # the generator's pixels (the watermark, a function of them, is the engine's and tested there)
    assert main(["generate", "--model", str(sd_dir), "--out", str(one), "--batch-size", "1", "--no-watermark",
                 *args]) == 0
    assert main(["generate", "--model", str(sd_dir), "--out", str(four), "--batch-size", "4", "--no-watermark",
                 *args]) == 0
    recs = read_manifest(four / "manifest.jsonl")
    assert [r.provenance["seed"] for r in recs] == [3, 4, 5, 6]
    prov = recs[0].provenance
    assert prov["backend"] == "diffusers" and prov["pipeline"] == "StableDiffusionPipeline"
    assert prov["scheduler"] == "DDIMScheduler" and prov["steps"] == 2
    assert prov["guidance"] == 7.5 and prov["negative_prompt"] is None  # the pipeline's documented defaults
    assert prov["model"] == str(sd_dir.resolve()) and len(prov["weights_sha256"]) == 64
    assert prov["gray"] == "ITU-R BT.601 luma" and prov["dtype"] == "float32"
    for r in recs:
        with Image.open(four / r.image) as im:
            assert im.mode == "L" and im.size == (32, 32)
        assert json.loads(read_png_text(four / r.image)["chexgen:provenance"])["seed"] == r.provenance["seed"]
        a, b = load_gray(one / r.image), load_gray(four / r.image)
        assert np.abs(a - b).max() <= 1 / 255 + 1e-6  # an image depends on its seed, not on its batch
    imgs = [load_gray(four / r.image) for r in recs]
    assert not np.array_equal(imgs[0], imgs[1])  # other seed, other image

    before = load_gray(four / recs[3].image)
    (four / recs[3].image).unlink()
    capsys.readouterr()
    assert main(["generate", "--model", str(sd_dir), "--out", str(four), "--batch-size", "4", "--no-watermark",
                 *args]) == 0
    assert "generated 1 image(s), skipped 3" in capsys.readouterr().out
    assert np.array_equal(load_gray(four / recs[3].image), before)


def test_precision_applies_to_diffusers_pipelines_and_dtype_is_its_old_spelling(sd_dir, tmp_path, capsys,
                                                                                 one_thread, monkeypatch):
    args = ["--prompt", "left effusion", "--seed", "1", "--no-watermark", *FAST]

    def run(name, *extra):
        out = tmp_path / name
        assert main(["generate", "--model", str(sd_dir), "--out", str(out), *args, *extra]) == 0
        rec = read_manifest(out / "manifest.jsonl")[0]
        return rec.provenance["dtype"], load_gray(out / rec.image)

    dtype, bf16 = run("bf16", "--precision", "bf16")
    assert dtype == "bfloat16"
    capsys.readouterr()
    dtype, alias = run("alias", "--dtype", "bfloat16")
    assert dtype == "bfloat16" and np.array_equal(alias, bf16)  # the old spelling, the same images
    assert "--dtype is deprecated; use --precision bf16" in capsys.readouterr().err
    monkeypatch.setenv("CHEXGEN_CPU_BF16", "0")
    dtype, fp32 = run("auto-off")  # auto, with the CPU's bf16 turned off: fp32
    assert dtype == "float32" and not np.array_equal(fp32, bf16)
    monkeypatch.setenv("CHEXGEN_CPU_BF16", "1")
    assert run("auto-on")[0] == "bfloat16"  # auto where bf16 is fast: bf16, as for chexgen models
    code = main(["generate", "--model", str(sd_dir), "--out", str(tmp_path / "both"), *args, "--dtype", "float16",
                 "--precision", "bf16"])
    assert code == 2 and "contradicts --precision bf16" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


def test_pixart_folder_with_a_prompt_template_from_a_manifest(pixart_dir, tmp_path, one_thread):
    man = _manifest(tmp_path / "m.jsonl")
    out = tmp_path / "px"
    assert main(["generate", "--model", str(pixart_dir), "--prompts", str(man), "--manifest", "--prompt-template",
                 "roentgen-v2", "--out", str(out), *FAST]) == 0
    recs = read_manifest(out / "manifest.jsonl")
    assert [r.impression for r in recs] == ["50 year old White female. Normal chest radiograph.",
                                           "71 year old Black male. Small left pleural effusion."]
    prov = recs[1].provenance
    assert prov["pipeline"] == "PixArtAlphaPipeline" and prov["scheduler"] == "DPMSolverMultistepScheduler"
    assert prov["guidance"] == 4.5 and prov["negative_prompt"] == ""  # PixArt's documented defaults
    assert prov["prompt_template"] == "roentgen-v2: {age} year old {race} {sex}. {impression}"
    assert recs[1].sex == "M" and recs[1].extra["source_id"] == "b"
    with Image.open(out / recs[0].image) as im:
        assert im.mode == "L" and im.size == (32, 32)
    assert prov["watermark"]["enabled"] is True  # marked by default, like every generated image
    assert json.loads((out / "generation.json").read_text())["prompt_template"].startswith("roentgen-v2")


def test_gray_conversion_is_bt601_luma_as_pil_converts():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    ours = rgb_to_gray(rgb.astype(np.float32) / 255.0)
    pil = np.stack([np.asarray(Image.fromarray(x, "RGB").convert("L"), np.float32) / 255 for x in rgb])
    assert ours.shape == (2, 8, 8) and np.abs(ours - pil).max() <= 1 / 255 + 1e-6
    same = np.repeat(rgb[..., :1], 3, axis=-1).astype(np.float32) / 255
    assert np.allclose(rgb_to_gray(same), same[..., 0], atol=1e-6)  # equal channels stay what they were


def test_templates_fill_fields_and_refuse_missing_ones():
    rec = Record(id="r1", sex="F", age=63.4, view="AP", impression="Edema.")
    items = [PromptItem("Edema.", rec, "m.jsonl: record 1")]
    assert apply_template(items, "{Sex}, {age}, {view}: {impression}")[0].prompt == "Female, 63, AP: Edema."
    assert apply_template([PromptItem("plain", None, "prompt 1")], "{impression}")[0].prompt == "plain"
    with pytest.raises(Exception, match=r"record r1.*needs \{race\}"):
        apply_template(items, "roentgen-v2")
    with pytest.raises(Exception, match="only manifest records have"):
        apply_template([PromptItem("plain", None, "prompt 1")], "{age} {impression}")
    with pytest.raises(Exception, match="unknown field"):
        parse_template("{impresion}")
    with pytest.raises(Exception, match="names no field"):
        parse_template("no fields")


@pytest.mark.parametrize("case, match", [
    ("forced-chexgen", "--backend chexgen"),
    ("hub-offline", "no local copy in the Hugging Face cache"),
    ("img2img", "not a text-to-image pipeline"),
    ("template-field", "needs {race}"),
    ("monai", "MONAI bundles cannot be driven"),
    ("chexgen-only", "--sampler: chexgen pipelines only"),
    ("not-a-model", "neither a chexgen pipeline"),
])
def test_bad_input_one_line_before_anything_is_generated(sd_dir, tmp_path, capsys, case, match):
    man = tmp_path / "m.jsonl"
    write_manifest(man, [Record(id="x", sex="F", age=40, impression="Normal.")])
    model, extra = str(sd_dir), ["--prompt", "x"]
    if case == "forced-chexgen":
        extra += ["--backend", "chexgen"]
    elif case == "hub-offline":
        model = "no-such-owner/no-such-cxr-model"
    elif case == "img2img":
        (tmp_path / "i2i").mkdir()
        index = json.loads((sd_dir / "model_index.json").read_text())
        (tmp_path / "i2i" / "model_index.json").write_text(json.dumps({**index,
                                                                       "_class_name": "StableDiffusionImg2ImgPipeline"}))
        model = str(tmp_path / "i2i")
    elif case == "template-field":
        extra = ["--prompts", str(man), "--manifest", "--prompt-template", "roentgen-v2"]
    elif case == "monai":
        (tmp_path / "bundle" / "configs").mkdir(parents=True)
        (tmp_path / "bundle" / "configs" / "inference.json").write_text("{}")
        model = str(tmp_path / "bundle")
    elif case == "chexgen-only":
        extra += ["--sampler", "ddim"]
    elif case == "not-a-model":
        (tmp_path / "empty").mkdir()
        model = str(tmp_path / "empty")
    out = tmp_path / "out"
    code = main(["generate", "--model", model, "--out", str(out), *FAST, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists(), err
    assert len(err.splitlines()) == 1 and match in err, err
