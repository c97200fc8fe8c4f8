"""Does the ControlNet adapter put the finding where the mask / box says? (phantom ground truth)

On a phantom cohort (``chexgen phantom``, exact finding masks), train for a fixed
CPU budget (1) a tiny text-to-image DiT, then (2) a ControlNet adapter on it
with the base frozen. Then, for held-out test cases, generate from the case's
impression with the same seeds twice: text only (base) and text + the case's
finding masks (or boxes) as the condition (base + adapter, guidance applied
through the control branch). A small segmenter, trained on the *real* phantom
training images against their exact finding masks, localises the finding in
every generated image, and this is compared with the case's ground-truth
finding region:

- hit rate: the segmenter's peak lies inside the region;
- Dice: the segmenter's top-|region| pixels vs the region.

The segmenter on the real test images gives the ceiling; the mean area
fraction of the regions gives the chance hit rate.

To fit a CPU budget the VAE is replaced by an exact space-to-depth latent
(``pixel_unshuffle`` by 2: the 64 px phantom images are used at 32 px, a
4-channel 16x16 latent; the condition image is encoded the same way). Model, adapter, objective
(learned-variance loss with caption dropout), CFG sampler and control path are
chexgen's own.

    python benchmarks/control.py                      # ~8 min on 2 busy CPU cores
    python benchmarks/control.py --condition boxes    # box control instead of masks
    python benchmarks/control.py --base-seconds 1200 --control-seconds 1200 --n 3000   # stronger

With ``--model DIR`` nothing is trained but the segmenter: a demo model folder (``pipeline/`` with its
real VAE + ``control/``, e.g. ``src/chexgen/assets/demo``) generates at its own resolution from the
impressions of held-out phantom cases (seed 1000, the model's ``prevalence.yaml``) with and without
their finding masks / boxes (same seeds; without = conditioning scale 0, which is exactly the text
pipeline), and the segmenter, trained on real phantom images of a third cohort (seed 3000), scores
both at ``--eval-size`` px:

    python benchmarks/control.py --model src/chexgen/assets/demo [--condition boxes] [--drop-location]

The impressions name the side and zone of each finding, so text alone already places many findings;
``--drop-location`` removes those words so that only the condition can say where.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from chexgen.curation.report_writer import TemplateReportWriter
from chexgen.data.conditions import record_condition
from chexgen.data.imageio import fit_square, load_gray
from chexgen.data.manifest import read_manifest
from chexgen.diffusion.samplers import denoise, make_generators
from chexgen.models.controlnet import ChexGenControlNet, ControlledDiT
from chexgen.models.dit import ChexGenDiT
from chexgen.models.presets import TextEncoderSpec
from chexgen.models.text_encoder import load_text_encoder
from chexgen.phantom.cohort import CohortConfig, write_cohort
from chexgen.pipelines.control import CONTROL_GUIDANCE, control_model_fn
from chexgen.training.diffusion_task import DiffusionObjective

FACTOR = 2  # space-to-depth factor standing in for the VAE (32 px image -> 4 x 16 x 16 latent)


def encode(images: torch.Tensor) -> torch.Tensor:
    return F.pixel_unshuffle(images * 2 - 1, FACTOR)


def decode(latents: torch.Tensor) -> torch.Tensor:
    return ((F.pixel_shuffle(latents, FACTOR) + 1) / 2).clamp(0, 1)


def finding_region(record, root: Path, size: int, condition: str) -> np.ndarray:
    """Ground-truth region of the record's findings: union of finding masks, or of their boxes."""
    if condition == "boxes":
        region = np.zeros((size, size), bool)
        for b in record.boxes:
            sx, sy = size / record.width, size / record.height
            region[int(b.y0 * sy): int(np.ceil(b.y1 * sy)), int(b.x0 * sx): int(np.ceil(b.x1 * sx))] = True
        return region
    cond = record_condition(record, root, size, kinds=("finding",), use_boxes=False)
    return np.zeros((size, size), bool) if cond is None else cond > 0


def load_split(records, root: Path, size: int, condition: str):
    images, conds, regions, texts = [], [], [], []
    for r in records:
        images.append(fit_square(load_gray(r.resolve(r.image, root)), size))
        if condition == "boxes":
            c = record_condition(r, root, size, kinds=(), use_boxes=True)
        else:
            c = record_condition(r, root, size, kinds=("finding",), use_boxes=False)
        conds.append(np.zeros((size, size), np.float32) if c is None else c)
        regions.append(finding_region(r, root, size, condition))
        texts.append(r.impression or "No acute cardiopulmonary process.")
    return (torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(conds))[:, None],
            np.stack(regions), texts)


def train_for(model, params, batches, seconds: float, objective, lr: float, seed: int, label: str) -> int:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    start, step, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < seconds:
        batch = batches(gen)
        logs = objective(model, batch, gen)
        opt.zero_grad(set_to_none=True)
        logs["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(logs["loss"].detach()))
        step += 1
        if step % 100 == 0:
            print(f"  {label}: step {step}, loss {np.mean(losses[-100:]):.4f}", file=sys.stderr)
    model.eval()
    print(f"  {label}: {step} steps in {seconds:.0f} s, final loss {np.mean(losses[-50:]):.4f}", file=sys.stderr)
    return step


class Segmenter(torch.nn.Module):
    """A small fully convolutional net: image -> finding logit per pixel (trained on real phantom images)."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        c = width
        self.down = torch.nn.Sequential(
            torch.nn.Conv2d(1, c, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.GELU())
        self.mid = torch.nn.Sequential(
            torch.nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(2 * c, 2 * c, 3, padding=2, dilation=2), torch.nn.GELU(),
            torch.nn.Conv2d(2 * c, 2 * c, 3, padding=4, dilation=4), torch.nn.GELU(),
            torch.nn.Upsample(scale_factor=2, mode="bilinear"))
        self.head = torch.nn.Conv2d(3 * c, 1, 1)

    def forward(self, x):
        a = self.down(x * 2 - 1)
        return self.head(torch.cat([a, self.mid(a)], dim=1))


def train_segmenter(images: torch.Tensor, regions: np.ndarray, seconds: float, seed: int,
                    steps: int | None = None) -> Segmenter:
    """Fit the finding segmenter on real training images and their exact finding regions."""
    torch.manual_seed(seed)
    net = Segmenter()
    target = torch.from_numpy(regions.astype(np.float32))[:, None]
    pos = float(target.mean())
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    start, step = time.perf_counter(), 0
    while (step < steps) if steps else (time.perf_counter() - start < seconds):
        idx = torch.randint(0, len(images), (32,), generator=gen)
        x, y = images[idx], target[idx]
        if step % 2:  # left-right flips: findings occur on both sides
            x, y = x.flip(-1), y.flip(-1)
        loss = F.binary_cross_entropy_with_logits(net(x), y, pos_weight=torch.tensor((1 - pos) / max(pos, 1e-3)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    print(f"  segmenter: {step} steps in {time.perf_counter() - start:.0f} s, loss {float(loss.detach()):.3f}", file=sys.stderr)
    return net.eval()


@torch.no_grad()
def detect(net: Segmenter, images: np.ndarray) -> np.ndarray:
    """Finding probability maps of images (H, W) in [0, 1]."""
    return torch.sigmoid(net(torch.from_numpy(np.asarray(images, np.float32))[:, None]))[:, 0].numpy()


def score(evidence: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: did the peak of the evidence map hit the region; Dice of its top-|region| pixels."""
    hits, dices = [], []
    for e, m in zip(evidence, regions):
        peak = np.unravel_index(np.argmax(e), e.shape)
        hits.append(bool(m[peak]))
        k = int(m.sum())
        top = np.zeros(e.size, bool)
        top[np.argsort(e.ravel())[::-1][:k]] = True
        dices.append(2 * (top & m.ravel()).sum() / (top.sum() + m.sum()))
    return np.array(hits), np.array(dices)


def _finding_condition(record, root: Path, condition: str):
    """The record's finding masks (or its boxes) as a :class:`ConditionInput`; None without any."""
    from chexgen.data.condition_sources import ConditionInput
    from chexgen.data.conditions import LabelledMask, load_mask, resolve_class

    if condition == "boxes":
        if not record.boxes:
            return None
        return ConditionInput(record.id, record.width, record.height, boxes=list(record.boxes))
    masks = [LabelledMask(m.name, load_mask(record.resolve(m.path, root), allow_empty=True))
             for m in record.masks if resolve_class(m.name).kind == "finding"]
    masks = [m for m in masks if m.mask.any()]
    return ConditionInput(record.id, record.width, record.height, masks=masks) if masks else None


_WHERE = re.compile(r"\b(left|right|bilateral)(-sided)?\b|\b(upper|mid|middle|lower)\s+zone\b", re.IGNORECASE)


def drop_location(text: str) -> str:
    """The impression without its side and zone words ("Small right upper zone consolidation." ->
    "Small consolidation."), so that only the condition can say where the finding is."""
    return re.sub(r"\s+([.,])", r"\1", re.sub(r"\s{2,}", " ", _WHERE.sub("", text))).strip()


def main_model(a) -> int:
    """``--model``: score a trained demo model's adapter (see the module docstring)."""
    from chexgen.pipelines.control import ChexGenControlPipeline

    t0 = time.perf_counter()
    model = Path(a.model)
    if not (model / "control" / "config.json").is_file() or not (model / "prevalence.yaml").is_file():
        print(f"{model}: expected a demo model folder with control/ and prevalence.yaml", file=sys.stderr)
        return 2
    pipe = ChexGenControlPipeline.from_pretrained(model / "control", precision=a.precision)
    size = pipe.base.config.resolution
    out = Path(a.out)
    cohorts = {}
    for name, seed, n in (("heldout", 1000, a.heldout), ("segmenter", 3000, a.n)):
        folder = out / f"model_{name}_{size}_{n}_{seed}"
        write_cohort(CohortConfig(n=n, size=size, seed=seed, prevalence=str(model / "prevalence.yaml"), workers=2),
                     folder, TemplateReportWriter(seed=seed), progress=False)
        cohorts[name] = (read_manifest(folder / "manifest.jsonl"), folder)
    seg_recs, seg_root = cohorts["segmenter"]
    e = a.eval_size
    seg_img = torch.from_numpy(np.stack([fit_square(load_gray(r.resolve(r.image, seg_root)), e) for r in seg_recs]))
    seg_region = np.stack([finding_region(r, seg_root, e, a.condition) for r in seg_recs])
    held, held_root = cohorts["heldout"]
    cases = []
    for r in held:
        region = finding_region(r, held_root, e, a.condition)
        cond = _finding_condition(r, held_root, a.condition)
        if cond is not None and region.any() and region.mean() < 0.5:
            cases.append((r, cond, region))
    cases = cases[: a.test_cases]
    print(f"{len(cases)} held-out cases with a finding region; cohorts in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    budget = f"{a.segmenter_steps} steps" if a.segmenter_steps else f"{a.segmenter_seconds:.0f} s"
    print(f"training the finding segmenter (evaluation only) for {budget} at {e} px",
          file=sys.stderr)
    segmenter = train_segmenter(seg_img[:, None], seg_region, a.segmenter_seconds, a.seed + 2, a.segmenter_steps)
    prompts = [r.impression or "No acute cardiopulmonary process." for r, _, _ in cases]
    if a.drop_location:
        prompts = [drop_location(t) for t in prompts]
    conds = [c for _, c, _ in cases]
    seeds = list(range(1000, 1000 + len(cases)))
    regions = np.stack([reg for _, _, reg in cases])
    results = {}
    t1 = time.perf_counter()
    runs = [("text only (base)", 0.0)] + [
        ("text + control" if list(a.control_scale) == [1.0] else f"text + control x{c:g}", c) for c in a.control_scale]
    for name, scale in runs:
        imgs = pipe(prompts, conds, seeds=seeds, conditioning_scale=scale, num_inference_steps=a.model_steps,
                    batch_size=16, progress=False, control_guidance=a.control_guidance).images[:, 0].numpy()
        results[name] = np.stack([fit_square(im, e) for im in imgs])
    t_gen = time.perf_counter() - t1
    real = np.stack([fit_square(load_gray(r.resolve(r.image, held_root)), e) for r, _, _ in cases])
    scored = {"real test images (segmenter ceiling)": score(detect(segmenter, real), regions)}
    for name, imgs in results.items():
        scored[name] = score(detect(segmenter, imgs), regions)
    settings = pipe.base.sampling_settings(None, a.model_steps, None)
    print(f"\nControl benchmark ({model}): {a.condition} condition, {size} px (scored at {e} px), {len(cases)} "
          f"held-out cases, {settings.sampler} {settings.steps} steps, guidance "
          f"{settings.guidance:g} ({pipe._guidance(a.control_guidance)} control guidance), {pipe.base.precision}"
          f"{', side / zone words dropped' if a.drop_location else ''}; "
          f"{2 * len(cases)} images in {t_gen:.0f} s; "
          f"{time.perf_counter() - t0:.0f} s total")
    return _report(scored, regions)


def _report(scored, regions) -> int:
    print(f"{'images':40s} {'hit rate':>9s} {'Dice':>7s}")
    for name, (hits, dices) in scored.items():
        print(f"{name:40s} {hits.mean():9.3f} {dices.mean():7.3f}")
    chance = float(regions.mean(axis=(1, 2)).mean())
    print(f"{'chance (mean region area fraction)':40s} {chance:9.3f}")
    from scipy.stats import binomtest, wilcoxon

    hit_b, dice_b = scored["text only (base)"]
    ceiling = scored["real test images (segmenter ceiling)"][0].mean()
    for name in [k for k in scored if k.startswith("text + control")]:
        hit_c, dice_c = scored[name]
        label = name.removeprefix("text + control").strip()
        only_c, only_b = int((hit_c & ~hit_b).sum()), int((hit_b & ~hit_c).sum())
        p_hit = binomtest(only_c, only_c + only_b).pvalue if only_c + only_b else 1.0
        p_dice = wilcoxon(dice_c, dice_b).pvalue if np.any(dice_c != dice_b) else 1.0
        print(f"with{' ' + label if label else ''} / without control: hit rate x{hit_c.mean() / max(hit_b.mean(), 1e-9):.2f} "
              f"(hit only with control {only_c}, only without {only_b}; sign test p={p_hit:.3f}), "
              f"Dice x{dice_c.mean() / max(dice_b.mean(), 1e-9):.2f} (Wilcoxon p={p_dice:.3f})")
        print(f"hit rate with control{' ' + label if label else ''} / segmenter ceiling: "
              f"{hit_c.mean() / max(ceiling, 1e-9):.2f} (target >= 0.8)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=800, help="phantom cases (80/10/10 split)")
    p.add_argument("--render-size", type=int, default=64, help="phantom render size in px")
    p.add_argument("--size", type=int, default=32, help="model image size in px (phantom images are resized)")
    p.add_argument("--out", default="runs/bench_control", help="work folder (the phantom cohort is reused)")
    p.add_argument("--condition", choices=("masks", "boxes"), default="masks")
    p.add_argument("--base-seconds", type=float, default=210.0, help="training budget of the base model")
    p.add_argument("--control-seconds", type=float, default=150.0, help="training budget of the adapter")
    p.add_argument("--segmenter-seconds", type=float, default=45.0,
                   help="training budget of the evaluation segmenter (real images only)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--patch", type=int, default=4, help="DiT patch size on the 16x16 latent (4 -> 16 tokens)")
    p.add_argument("--test-cases", type=int, default=64)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 is fastest on a shared, busy 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, metavar="DIR",
                   help="score this demo model folder's adapter instead of training tiny ones (module docstring); "
                        "--n is then the segmenter cohort's size")
    p.add_argument("--segmenter-steps", type=int, default=None,
                   help="train the segmenter for this many steps instead of --segmenter-seconds (reproducible "
                        "across machine load)")
    p.add_argument("--heldout", type=int, default=256, help="--model: held-out cases rendered (seed 1000)")
    p.add_argument("--eval-size", type=int, default=64, help="--model: px at which the segmenter scores")
    p.add_argument("--model-steps", type=int, default=None, help="--model: sampling steps (default: the model's)")
    p.add_argument("--precision", default="auto", help="--model: auto | fp32 | bf16 | fp16")
    p.add_argument("--control-scale", type=float, nargs="+", default=[1.0],
                   help="--model: the adapter's conditioning scale(s); several give one row each (same seeds)")
    p.add_argument("--control-guidance", choices=CONTROL_GUIDANCE, default=None,
                   help="joint: the condition goes into guidance's conditional branch only; shared: into both "
                        "(default: the adapter's stored setting with --model, joint otherwise)")
    p.add_argument("--drop-location", action="store_true",
                   help="--model: remove side and zone words from the prompts, so that only the condition says "
                        "where the finding is (text alone then localises by chance or by anatomy)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.model:
        return main_model(a)
    t0 = time.perf_counter()
    out = Path(a.out)

    cohort_dir = out / f"phantom_{a.render_size}_{a.n}_{a.seed}"
    write_cohort(CohortConfig(n=a.n, size=a.render_size, seed=a.seed, prevalence="balanced", workers=1), cohort_dir,
                 TemplateReportWriter(seed=a.seed), progress=False)
    records = read_manifest(cohort_dir / "manifest.jsonl")
    train = [r for r in records if r.split != "test"]
    test = [r for r in records if r.split == "test"]
    x_img, x_cond, x_region, x_text = load_split(train, cohort_dir, a.size, a.condition)
    t_img, t_cond, t_region, t_text = load_split(test, cohort_dir, a.size, a.condition)
    keep = [i for i in range(len(test)) if t_region[i].any() and t_region[i].mean() < 0.5][: a.test_cases]
    print(f"cohort: {len(train)} train / {len(test)} test cases; {len(keep)} test cases with a finding region; "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    text_encoder = load_text_encoder(TextEncoderSpec(kind="minilm", max_length=32, embed_dim=384))
    with torch.no_grad():
        enc = text_encoder.encode(x_text)
        t_enc = text_encoder.encode([t_text[i] for i in keep])
    x_lat, x_ctl = encode(x_img), encode(x_cond)

    base = ChexGenDiT(sample_size=a.size // FACTOR, patch_size=a.patch, in_channels=FACTOR * FACTOR,
                      hidden_size=a.hidden, depth=a.depth, num_heads=4, caption_channels=384, max_text_len=32)

    def batches(gen):
        idx = torch.randint(0, len(x_lat), (a.batch_size,), generator=gen)
        return {"latent_mean": x_lat[idx], "text": enc.embeddings[idx], "text_mask": enc.mask[idx],
                "control": x_ctl[idx]}

    print(f"training base ({sum(p.numel() for p in base.parameters()) / 1e6:.2f}M params) for {a.base_seconds:.0f} s",
          file=sys.stderr)
    base_steps = train_for(base, list(base.parameters()), batches, a.base_seconds,
                           DiffusionObjective(latent_sampling="mean"), a.lr, a.seed, "base")
    adapter = ChexGenControlNet.from_transformer(base)
    model = ControlledDiT(base, adapter)
    print(f"training adapter ({adapter.num_blocks} blocks, {sum(p.numel() for p in adapter.parameters()) / 1e6:.2f}M "
          f"params; base frozen) for {a.control_seconds:.0f} s", file=sys.stderr)
    objective = DiffusionObjective(latent_sampling="mean", extra_inputs=lambda b: {"control_latents": b["control"]})
    control_steps = train_for(model, model.trainable_parameters(), batches, a.control_seconds, objective, a.lr,
                              a.seed + 1, "adapter")

    # -- evaluation ------------------------------------------------------------------------------
    print(f"training the finding segmenter (evaluation only) for {a.segmenter_seconds:.0f} s", file=sys.stderr)
    segmenter = train_segmenter(x_img, x_region, a.segmenter_seconds, a.seed + 2)
    regions = t_region[keep]
    control = encode(t_cond[keep])
    shape = tuple(control.shape[1:])
    null = base.null_text(len(keep), mask_like=t_enc.mask)
    results = {}
    with torch.no_grad():
        for name, adp in (("text only (base)", None), ("text + control", adapter)):
            lat = denoise(control_model_fn(base, adp, control, control_guidance=a.control_guidance or "joint"),
                          (t_enc.embeddings, t_enc.mask), null,
                          make_generators(range(1000, 1000 + len(keep))), shape, sampler="ddim",
                          num_inference_steps=a.steps, guidance_scale=a.guidance)
            results[name] = decode(lat)[:, 0].numpy()
    real = t_img[keep, 0].numpy()
    scored = {"real test images (segmenter ceiling)": score(detect(segmenter, real), regions)}
    for name, imgs in results.items():
        scored[name] = score(detect(segmenter, imgs), regions)
    print(f"\nControl benchmark: {a.condition} condition, phantom {a.size} px, {len(keep)} test cases, "
          f"base {base_steps} steps / adapter {control_steps} steps (batch {a.batch_size}), "
          f"DDIM {a.steps}, guidance {a.guidance} ({a.control_guidance or 'joint'} control guidance), "
          f"{time.perf_counter() - t0:.0f} s total")
    return _report(scored, regions)


if __name__ == "__main__":
    sys.exit(main())
