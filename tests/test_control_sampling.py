"""Control-aware sampling: guidance with the condition in one or both halves, pipeline end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chexgen.data.condition_sources import ConditionInput
from chexgen.data.conditions import LabelledMask
from chexgen.data.manifest import Box
from chexgen.diffusion.samplers import guided_prediction
from chexgen.errors import ChexgenError
from chexgen.models.controlnet import ChexGenControlNet, controlled_forward
from chexgen.models.presets import TextEncoderSpec, VAESpec
from chexgen.pipelines import ChexGenPipeline
from chexgen.pipelines.control import ChexGenControlPipeline, control_model_fn

SMALL_VAE = VAESpec(kind="gray", block_out_channels=(8, 8, 16, 16))  # fast decode in tests


def _perturb(module, std=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def pipes(tiny_t5_dir):
    spec = TextEncoderSpec(kind="t5", name_or_path=str(tiny_t5_dir), max_length=8, embed_dim=32)
    base = ChexGenPipeline.from_preset("tiny", resolution=32, text_encoder_spec=spec, vae_spec=SMALL_VAE,
                                       depth=3, hidden_size=32,
                                       num_heads=2)
    _perturb(base.transformer)
    fresh = ChexGenControlNet.from_transformer(base.transformer)
    trained = ChexGenControlNet.from_transformer(base.transformer)
    _perturb(trained, std=0.1)
    return base, fresh, trained


def _conditions():
    mask = np.zeros((64, 64), bool)
    mask[5:30, 40:60] = True
    return [
        ConditionInput("a", 64, 64, masks=[LabelledMask("Pneumothorax", mask)]),
        ConditionInput("b", 100, 100, boxes=[Box("Nodule", 10, 10, 40, 40), Box("Effusion", 50, 60, 95, 95)]),
        ConditionInput("c", 64, 64, boxes=[Box("Cardiomegaly", 20, 30, 44, 56)]),
    ]


def test_control_guidance_joint_and_shared(pipes):
    base, _, adapter = pipes
    dit = base.transformer
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 4, generator=g)
    t = torch.tensor([600])
    emb, mask = torch.randn(2, 8, 32, generator=g), torch.ones(2, 8, dtype=torch.long)
    null_emb, null_mask = dit.null_text(2, mask_like=mask)
    control = torch.randn(2, 4, 4, 4, generator=g)
    scale = 4.0

    def guided(mode):
        return guided_prediction(control_model_fn(dit, adapter, control, control_guidance=mode), x, t, (emb, mask),
                                 (null_emb, null_mask), scale)

    with torch.no_grad():
        shared, joint = guided("shared"), guided("joint")
        eps_c = controlled_forward(dit, adapter, x, t.expand(2), emb, mask, control)
        eps_u_ctrl = controlled_forward(dit, adapter, x, t.expand(2), null_emb, null_mask, control)
        eps_u_base = dit(x, t.expand(2), null_emb, null_mask)  # the base alone, null caption, no condition
        unguided = control_model_fn(dit, adapter, control, control_guidance="joint")(x, t.expand(2), emb, mask)
    for got, eps_u in ((shared, eps_u_ctrl), (joint, eps_u_base)):
        want = torch.cat([eps_u[:, :4] + scale * (eps_c[:, :4] - eps_u[:, :4]), eps_c[:, 4:]], dim=1)
        assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(shared, joint, atol=1e-3)
    assert torch.allclose(unguided, eps_c, atol=1e-6)  # one branch (no guidance): it always sees the condition
    with pytest.raises(ChexgenError, match="does not tile"):
        control_model_fn(dit, adapter, control)(x[:1].repeat(3, 1, 1, 1), t, emb[:1].repeat(3, 1, 1), None)
    with pytest.raises(ChexgenError, match="control guidance must be one of joint, shared"):
        control_model_fn(dit, adapter, control, control_guidance="both")


def test_fresh_adapter_reproduces_base_pipeline_images(pipes):
    base, fresh, _ = pipes
    pipe = ChexGenControlPipeline(base, fresh)
    prompts = ["Small left pneumothorax.", "Right pleural effusion.", "Cardiomegaly."]
    conds = _conditions()
    out = pipe(prompts, conds, seed=11, num_inference_steps=4, guidance_scale=3.0, progress=False)
    ref = base(prompts, seed=11, num_inference_steps=4, guidance_scale=3.0, progress=False)
    assert out.images.shape == (3, 1, 32, 32) and out.conditions.shape == (3, 1, 32, 32)
    assert torch.allclose(out.images, ref.images, atol=1e-6)
    assert out.condition_ids == ["a", "b", "c"] and out.seeds == [11, 12, 13]


def test_trained_adapter_changes_images_per_condition_and_seed(pipes):
    base, _, trained = pipes
    pipe = ChexGenControlPipeline(base, trained)
    conds = _conditions()
    kw = dict(num_inference_steps=3, guidance_scale=2.0, progress=False)
    together = pipe("Findings.", conds, seeds=[5, 6, 7], batch_size=3, **kw)
    alone = pipe("Findings.", conds[1:2], seeds=[6], batch_size=1, **kw)
    assert torch.allclose(together.images[1], alone.images[0], atol=1e-5)  # depends on seed + condition only
    plain = base(["Findings."] * 3, seeds=[5, 6, 7], **kw)
    assert not torch.allclose(together.images, plain.images, atol=1e-4)
    off = pipe("Findings.", conds, seeds=[5, 6, 7], conditioning_scale=0.0, **kw)
    assert torch.allclose(off.images, plain.images, atol=1e-6)
    two = pipe("Findings.", conds[:2], num_images_per_condition=2, seed=0, **kw)
    assert two.condition_ids == ["a", "a", "b", "b"] and two.seeds == [0, 1, 2, 3]
    with pytest.raises(ChexgenError, match="2 prompts for 3 conditions"):
        pipe(["x", "y"], conds, **kw)
    with pytest.raises(ChexgenError, match="no prompt for condition"):
        pipe([], conds, **kw)


def test_save_and_load_control_pipeline(pipes, tmp_path):
    base, _, trained = pipes
    base.save_pretrained(tmp_path / "base")
    trained.save_pretrained(tmp_path / "ctrl")
    (tmp_path / "ctrl" / "control_info.json").write_text('{"base_model": "%s"}' % (tmp_path / "base"))
    loaded = ChexGenControlPipeline.from_pretrained(tmp_path / "ctrl", text_encoder=base.text_encoder)
    conds = _conditions()[:1]
    kw = dict(seeds=[3], num_inference_steps=2, guidance_scale=2.0, progress=False)
    a = ChexGenControlPipeline(base, trained)("Pneumothorax.", conds, **kw).images
    b = loaded("Pneumothorax.", conds, **kw).images
    assert torch.allclose(a, b, atol=1e-6)
    # convert-official layout: the adapter inside the base pipeline folder, no control_info.json
    trained.save_pretrained(tmp_path / "base" / "controlnet")
    nested = ChexGenControlPipeline.from_pretrained(tmp_path / "base" / "controlnet", text_encoder=base.text_encoder)
    assert torch.allclose(nested("Pneumothorax.", conds, **kw).images, a, atol=1e-6)
    with pytest.raises(ChexgenError, match="no control_info.json"):
        ChexGenControlPipeline.from_pretrained(tmp_path / "ctrl2")


def test_stored_control_guidance_is_the_default_and_can_be_overridden(pipes, tmp_path):
    base, _, trained = pipes
    base.save_pretrained(tmp_path / "base")
    trained.save_pretrained(tmp_path / "ctrl")
    (tmp_path / "ctrl" / "control_info.json").write_text(
        '{"base_model": "%s", "control_guidance": "joint"}' % (tmp_path / "base"))
    joint = ChexGenControlPipeline.from_pretrained(tmp_path / "ctrl", base=base)
    assert joint.control_guidance == "joint"
    legacy = ChexGenControlPipeline(base, trained)  # no stored setting: the behaviour adapters always had
    assert legacy.control_guidance == "shared"
    conds = _conditions()[:2]
    kw = dict(seeds=[3, 4], num_inference_steps=3, guidance_scale=3.0, progress=False)
    a = joint("Pneumothorax.", conds, **kw).images
    assert torch.allclose(a, legacy("Pneumothorax.", conds, control_guidance="joint", **kw).images, atol=1e-6)
    assert not torch.allclose(a, legacy("Pneumothorax.", conds, **kw).images, atol=1e-4)
    assert torch.allclose(joint("Pneumothorax.", conds, control_guidance="shared", **kw).images,
                          legacy("Pneumothorax.", conds, **kw).images, atol=1e-6)
    # conditioning scale 0 is the text pipeline exactly, in either mode
    plain = base(["Pneumothorax."] * 2, **kw).images
    assert torch.allclose(joint("Pneumothorax.", conds, conditioning_scale=0.0, **kw).images, plain, atol=1e-6)
    with pytest.raises(ChexgenError, match="control guidance must be one of"):
        joint("Pneumothorax.", conds, control_guidance="cond", **kw)


def test_official_binary_palette_adapter_sees_white_masks(pipes, tmp_path):
    base, _, _ = pipes
    official = ChexGenControlNet.from_transformer(base.transformer, palette="official-binary-mask")
    official.save_pretrained(tmp_path / "official")
    pipe = ChexGenControlPipeline.from_pretrained(tmp_path / "official", base=base)
    img = pipe.render(_conditions()[1])
    assert set(np.unique(img)) == {0.0, 1.0}
    gray = ChexGenControlPipeline(base, ChexGenControlNet.from_transformer(base.transformer)).render(_conditions()[1])
    assert np.array_equal(gray > 0, img > 0) and len(np.unique(gray)) == 3


def test_control_info_reads_the_legacy_packed_key(tmp_path):
    from chexgen.pipelines.control import ControlInfo

    (tmp_path / "control_info.json").write_text('{"base_model": "../pipeline", "trained_on_base_sha256": "ab"}')
    info = ControlInfo.read(tmp_path)
    assert info.base_model == "../pipeline" and info.base_checkpoint_sha256 == "ab"
    info.write(tmp_path / "again")
    assert ControlInfo.read(tmp_path / "again") == info
    (tmp_path / "control_info.json").write_text('{"data": "x"}')
    with pytest.raises(ChexgenError, match="base_model"):
        ControlInfo.read(tmp_path)
