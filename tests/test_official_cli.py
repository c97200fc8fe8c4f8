"""`chexgen convert-official` end to end on tiny official-layout checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from chexgen.cli import main
from chexgen.models.dit import ChexGenDiT

sys.path.insert(0, str(Path(__file__).parent))
from test_official_convert import (  # noqa: E402
    HEADS,
    IN_CH,
    _Payload,
    control_checkpoint,
    inputs,
    official_forward,
    official_state_dict,
)


def test_convert_writes_pipeline_folder(tmp_path, capsys):
    sd = official_state_dict(grid=16)
    ckpt = tmp_path / "chexgen_256.pth"
    torch.save({"state_dict_ema": {"module." + k: v for k, v in sd.items()}, "state_dict": sd}, ckpt)
    out = tmp_path / "converted"
    assert main(["convert-official", str(ckpt), "--out", str(out), "--num-heads", str(HEADS)]) == 0
    assert "state_dict_ema" in capsys.readouterr().out

    cfg = json.loads((out / "chexgen_config.json").read_text())
    assert cfg["resolution"] == 256 and cfg["prompt_cleaning"] == "official"
    assert cfg["text_encoder"]["kind"] == "t5" and cfg["text_encoder"]["name_or_path"] == "google/t5-v1_1-xxl"
    assert cfg["text_encoder"]["max_length"] == 7 and cfg["text_encoder"]["embed_dim"] == 20  # the tiny model's
    assert cfg["vae"]["kind"] == "sd" and cfg["vae"]["name_or_path"] == "stabilityai/sd-vae-ft-ema"
    assert cfg["extra"]["source"] == "official" and len(cfg["extra"]["checkpoint_sha256"]) == 64
    assert not (out / "vae").exists()  # a reference, never weights
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    assert not (out / "controlnet").exists()

    model = ChexGenDiT.from_pretrained(str(out / "transformer")).eval()
    assert model.config.null_caption_mask == "prompt" and model.config.interpolation_scale == 1.0
    x, t, y, mask = inputs(16, bsz=2)
    with torch.no_grad():
        got = model(x, t, y, mask)
    torch.testing.assert_close(got.double(), official_forward(sd, x, t, y, mask), atol=1e-5, rtol=1e-5)

    # Never overwrite an existing folder.
    assert main(["convert-official", str(ckpt), "--out", str(out), "--num-heads", str(HEADS)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_convert_refuses_pickled_objects(tmp_path, capsys):
    target = tmp_path / "ran"
    ckpt = tmp_path / "evil.pth"
    torch.save({"state_dict_ema": official_state_dict(), "cfg": _Payload(str(target))}, ckpt)
    assert main(["convert-official", str(ckpt), "--out", str(tmp_path / "o"), "--num-heads", str(HEADS)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not target.exists() and not (tmp_path / "o").exists()


def test_convert_control_checkpoint_writes_adapter(tmp_path):
    from chexgen.models.controlnet import ChexGenControlNet, controlled_forward

    base, sd = control_checkpoint(blocks=3, depth=4)
    ckpt = tmp_path / "control.pth"
    torch.save({"state_dict_ema": sd}, ckpt)
    out = tmp_path / "ctrl"
    assert main(["convert-official", str(ckpt), "--out", str(out), "--control", "--num-heads", str(HEADS),
                 "--no-hash", "--dtype", "float32"]) == 0
    adapter = ChexGenControlNet.from_pretrained(str(out / "controlnet"))
    assert adapter.num_blocks == 3 and adapter.config.palette == "official-binary-mask"
    torch.testing.assert_close(adapter.controlnet[1].after_proj.weight, sd["controlnet.1.after_proj.weight"])
    model = ChexGenDiT.from_pretrained(str(out / "transformer")).eval()
    adapter.check_compatible(model)
    x, t, y, mask = inputs(16, bsz=1)
    with torch.no_grad():
        # Zero conditioning scale: exactly the base model, which is the official base math.
        plain = controlled_forward(model, adapter, x, t, y, mask, torch.randn_like(x), conditioning_scale=0.0)
        cond = torch.randn_like(x)
        ctrl = controlled_forward(model, adapter, x, t, y, mask, cond, conditioning_scale=1.0)
    torch.testing.assert_close(plain.double(), official_forward(base, x, t, y, mask, depth=4), atol=1e-5, rtol=1e-5)
    # Full scale: the official ControlT2IDiT math (control block j feeds base block j + 1).
    control_sd = {k: v for k, v in sd.items() if k.startswith("controlnet.")}
    want = official_forward(base, x, t, y, mask, depth=4, control_sd=control_sd, cond=cond)
    torch.testing.assert_close(ctrl.double(), want, atol=1e-5, rtol=1e-5)
    assert (ctrl - plain).abs().max() > 1e-3  # the non-zero official projections do act
    assert plain.shape[1] == 2 * IN_CH


def test_converted_folder_generates_with_the_official_sampler(tmp_path, tiny_t5_dir):
    """Convert, reload with ChexGenPipeline (local tiny T5 + tiny RGB VAE as the references), sample."""
    from diffusers import AutoencoderKL

    from chexgen.pipelines import ChexGenPipeline

    vae_dir = tmp_path / "vae"
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
                  layers_per_block=1, latent_channels=4, norm_num_groups=8,
                  scaling_factor=0.18215).save_pretrained(str(vae_dir))
    sd = official_state_dict(grid=16, cap=32, tokens=16)  # the tiny T5 gives 16 tokens x 32 dims
    ckpt = tmp_path / "official.pth"
    torch.save({"state_dict_ema": sd}, ckpt)
    out = tmp_path / "pipe"
    assert main(["convert-official", str(ckpt), "--out", str(out), "--num-heads", str(HEADS), "--no-hash",
                 "--text-encoder", str(tiny_t5_dir), "--vae", str(vae_dir)]) == 0

    pipe = ChexGenPipeline.from_pretrained(out)
    prompt = "sex:Male, age:71.0, race:Black. Small (LEFT) pleural effusion."
    assert pipe.clean([prompt]) == ["sex:male, age:71.0, race:black. small left pleural effusion."]
    result = pipe([prompt], sampler="official", num_inference_steps=2, seed=3, progress=False)
    assert result.images.shape == (1, 1, 256, 256)
    assert 0.0 <= result.images.min() and result.images.max() <= 1.0
    again = pipe([prompt], sampler="official", num_inference_steps=2, seed=3, progress=False)
    torch.testing.assert_close(result.images, again.images)


def test_convert_infers_the_scale_and_takes_pos_embed_scale(tmp_path, capsys):
    sd = official_state_dict(grid=24, scale=1.5)  # 384 px: no official scale
    ckpt = tmp_path / "chexgen_384.pth"
    torch.save({"state_dict_ema": sd}, ckpt)
    assert main(["convert-official", str(ckpt), "--out", str(tmp_path / "a"), "--num-heads", str(HEADS),
                 "--no-hash"]) == 0
    assert "384 px, pos-embed scale 1.5" in capsys.readouterr().out
    assert ChexGenDiT.from_pretrained(str(tmp_path / "a" / "transformer")).config.interpolation_scale == 1.5
    no_pe = {k: v for k, v in sd.items() if k != "pos_embed"}
    torch.save({"state_dict_ema": no_pe}, ckpt)
    assert main(["convert-official", str(ckpt), "--out", str(tmp_path / "b"), "--num-heads", str(HEADS),
                 "--no-hash"]) == 2
    err = capsys.readouterr().err
    assert "pass --resolution" in err
    assert main(["convert-official", str(ckpt), "--out", str(tmp_path / "b"), "--num-heads", str(HEADS),
                 "--resolution", "384", "--no-hash"]) == 2
    assert "pass --pos-embed-scale" in capsys.readouterr().err
    assert main(["convert-official", str(ckpt), "--out", str(tmp_path / "b"), "--num-heads", str(HEADS),
                 "--resolution", "384", "--pos-embed-scale", "1.5", "--no-hash"]) == 0


def test_every_pass_hint_names_an_existing_option(capsys):
    """Every "pass --X" in the conversion code's errors is an option of the command."""
    import re

    import pytest

    import chexgen.models.official as official
    import chexgen.pipelines.convert_official as convert

    with pytest.raises(SystemExit):
        main(["convert-official", "--help"])
    options = set(re.findall(r"(--[a-z][a-z-]*)", capsys.readouterr().out))
    hinted = set()
    for module in (official, convert):
        text = Path(module.__file__).read_text()
        hinted |= set(re.findall(r"pass (--[a-z][a-z-]*)", text))
        assert not re.search(r"pass (the scale|num_heads)\b", text)
    assert hinted and hinted <= options, hinted - options
