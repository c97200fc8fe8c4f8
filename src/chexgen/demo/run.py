"""``chexgen demo``: the bundled phantom-trained model, end to end, in one HTML report.

What a run does (each step shows progress):

1. loads the bundled pipeline (``chexgen/assets/demo/pipeline``: a tiny DiT, the
   gray VAE it was trained with, and the offline MiniLM text encoder) or any
   pipeline folder given with ``--model``;
2. renders a *held-out* phantom cohort (another seed than the training cohort,
   same finding recipe) whose exact labels are the ground truth;
3. generates one image from the impression of every held-out case (paired with
   its source), a few images per showcase prompt (one per finding the model
   knows), and a few images per real radiology impression read at run time from
   the Indiana University reports (NLMCXR) that torchxrayvision ships;
4. evaluates the generated images against the held-out phantom images with the
   phantom-trained classifier shipped beside the model (FID on its features,
   per-class AUROC against the prompts' labels, Pearson correlation of scores,
   diversity, memorisation), next to two references: the same classifier on the
   real held-out images, and the FID between two halves of the real set;
5. writes ``report.html`` + ``metrics.json`` (and the images with a synthetic
   manifest) into the output folder and returns the report path.

The same :func:`evaluate_demo_model` backs ``benchmarks/demo_quality.py`` with a
larger held-out set.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from chexgen.assets import RETRAIN_HINT, demo_model_dir
from chexgen.data.labels import LABELS
from chexgen.data.manifest import Record, write_manifest
from chexgen.data.provenance import image_provenance
from chexgen.errors import ChexgenError
from chexgen.evaluation.metrics.classification import finite_mean

__all__ = ["DemoConfig", "bundled_model_dir", "run_demo", "evaluate_demo_model", "nlmcxr_prompts"]

log = logging.getLogger(__name__)

BUNDLED = demo_model_dir()


def bundled_model_dir() -> Path:
    """The folder of the bundled demo model (pipeline/, classifier/, prevalence.yaml, MODEL_CARD.md)."""
    return demo_model_dir()


@dataclass
class DemoConfig:
    """Settings of ``chexgen demo`` (defaults fit in a few minutes on 2 CPU cores)."""

    out: str = "chexgen-demo"
    model: str | None = None  # a demo model folder (pipeline/ + classifier/) or a pipeline folder
    classifier: str | None = None  # default: <model>/classifier
    n_heldout: int = 64  # held-out phantom cases rendered as the real reference
    heldout_seed: int = 1000  # the bundled model was trained on phantom seed 0
    images_per_prompt: int = 4  # for showcase and NLMCXR prompts
    n_nlmcxr: int = 4  # real impressions from torchxrayvision's NLMCXR reports
    control: str | None = None  # ControlNet adapter folder; default: <model>/control when present
    n_control_masks: int = 3  # real SIIM-ACR pneumothorax masks (torchxrayvision) for the control part
    n_control_boxes: int = 3  # real NIH ChestX-ray14 boxes (torchxrayvision) for the control part
    control_images: int = 4  # per mask / box, each with and without the adapter (same seed)
    sampler: str | None = None  # None = the model's own default (the bundled model stores dpmsolver++sde)
    steps: int | None = None  # None = the model's own default (the bundled model stores 20)
    guidance: float | None = None  # None = the model's own default (the bundled model stores its tuned value)
    seed: int = 0
    batch_size: int = 16
    bootstrap: int = 100  # draws for the report's CIs (AUROC bootstraps dominate the evaluation time)
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (chexgen.models.precision): generation and evaluation
    workers: int = 2
    progress: bool = True


def _resolve_model(cfg: DemoConfig) -> tuple[Path, Path | None, Path | None]:
    """(pipeline folder, classifier folder or None, prevalence file or None)."""
    root = Path(cfg.model) if cfg.model else BUNDLED
    if not root.exists():
        raise ChexgenError(f"{root}: model folder not found")
    pipeline = root / "pipeline" if (root / "pipeline" / "chexgen_config.json").is_file() else root
    if not (pipeline / "chexgen_config.json").is_file():
        if cfg.model is None:
            raise ChexgenError(f"the bundled demo model is missing from {BUNDLED}; {RETRAIN_HINT}")
        raise ChexgenError(f"{root}: not a chexgen pipeline folder (no chexgen_config.json)")
    classifier = Path(cfg.classifier) if cfg.classifier else root / "classifier"
    if not (classifier / "config.json").is_file():
        if cfg.classifier:
            raise ChexgenError(f"{classifier}: not a chexgen classifier folder")
        classifier = None
    prevalence = root / "prevalence.yaml"
    return pipeline, classifier, prevalence if prevalence.is_file() else None


def _resolve_control(cfg: DemoConfig, pipeline_dir: Path) -> Path | None:
    """The adapter folder of the control part: ``--control``, else ``control/`` beside the pipeline."""
    if cfg.control:
        path = Path(cfg.control)
        if not (path / "config.json").is_file():
            raise ChexgenError(f"{path}: not a ControlNet adapter folder (no config.json)")
        return path
    beside = pipeline_dir.parent / "control"
    return beside if (beside / "config.json").is_file() else None


def nlmcxr_prompts(n: int, trained: Sequence[str], seed: int = 0, max_words: int = 25) -> list[Record]:
    """``n`` short real impressions (Indiana University reports shipped by torchxrayvision, read now).

    Preference goes to impressions whose MeSH labels fall within the findings the model was trained
    on (``trained``), so the comparison is meaningful; returns fewer when the archive is missing.
    """
    if n <= 0:
        return []
    try:
        from chexgen.data.sources.nlmcxr import load_nlmcxr

        records = load_nlmcxr().records
    except (ChexgenError, OSError) as e:
        log.warning("NLMCXR reports not available (%s); the demo runs without real prompts", e)
        return []
    known = set(trained) | {"No Finding"}
    good = []
    for r in records:
        imp = (r.impression or "").strip()
        positives = {k for k, v in r.labels.items() if v == 1}
        if not imp or len(imp.split()) > max_words or not positives or not positives <= known:
            continue
        good.append(r)
    rng = random.Random(seed)
    rng.shuffle(good)
    # one normal impression, the rest with findings
    normal = [r for r in good if r.labels.get("No Finding") == 1][:1]
    abnormal = [r for r in good if r.labels.get("No Finding") != 1][: max(0, n - len(normal))]
    return (normal + abnormal)[:n]


def _showcase(heldout: Sequence[Record], trained: Sequence[str]) -> list[Record]:
    """One held-out case per trained finding whose only positive label is that finding, plus a normal one."""
    out: list[Record] = []
    for name in ["No Finding", *trained]:
        for r in heldout:
            pos = [k for k, v in r.labels.items() if v == 1]
            if pos == [name] and r.impression:
                out.append(r)
                break
    return out


def _generate(pipe, prompts: Sequence[str], seeds: Sequence[int], cfg: DemoConfig, desc: str) -> np.ndarray:
    if not prompts:
        return np.zeros((0, pipe.config.resolution, pipe.config.resolution), np.float32)
    out = pipe(list(prompts), seeds=list(seeds), sampler=cfg.sampler, num_inference_steps=cfg.steps,
               guidance_scale=cfg.guidance, batch_size=cfg.batch_size, progress=cfg.progress)
    log.info("%s: %d images", desc, len(prompts))
    return out.images[:, 0].float().numpy()


def _synthetic_records(sources: Sequence[Record], prompts: Sequence[str], seeds: Sequence[int], images: np.ndarray,
                       out: Path, group: str, provenance: dict[str, Any]) -> list[Record]:
    from chexgen.generation.writer import write_synthetic_png

    recs = []
    for k, (src, prompt, seed, img) in enumerate(zip(sources, prompts, seeds, images)):
        rid = f"{group}_{k:04d}"
        rel = f"images/{group}/{rid}.png"
        prov = write_synthetic_png(out / rel, img, rid, image_provenance(provenance, prompt, seed))
        recs.append(Record(
            id=rid, image=rel, dataset="chexgen-demo", view=src.view, sex=src.sex, age=src.age, race=src.race,
            width=img.shape[1], height=img.shape[0], labels=dict(src.labels), impression=prompt, synthetic=True,
            provenance=prov, extra={"source_id": src.id},
        ))
    return recs


def evaluate_demo_model(
    classifier,
    heldout: Sequence[Record],
    heldout_images: np.ndarray,
    synthetic: Sequence[Record],
    synthetic_images: np.ndarray,
    trained: Sequence[str],
    bootstrap: int = 200,
    progress: bool = True,
    tsne: bool = True,
    distribution_bootstrap: int = 50,
) -> tuple[dict, list]:
    """Evaluation suite on (held-out real, generated-from-their-prompts) plus the demo's references.

    Returns ``(results, figures)``. ``results["demo"]`` holds the quality-bar numbers: mean per-class AUROC of
    the classifier on generated images (prompt labels) over the trained findings, with its bootstrap CI over
    the generated images (``auroc_generated_mean_ci``), and FID real vs generated (both as the suite computed
    them), next to the demo's two references: the same AUROC on the real held-out images (true labels) and the
    FID between two halves of the real set. ``tsne=False`` skips the t-SNE figure;
    ``distribution_bootstrap`` caps the draws of the FID / KID / precision-recall CIs.
    """
    from chexgen.evaluation.features import ClassifierExtractor
    from chexgen.evaluation.matching import label_matrix
    from chexgen.evaluation.metrics import compute_fid, compute_per_class_auroc
    from chexgen.evaluation.stats import bootstrap_ci
    from chexgen.evaluation.suite import EvaluationConfig, evaluate_sets, set_from_arrays

    ext = ClassifierExtractor(classifier, input_size=classifier.input_size, class_names=classifier.class_names,
                              name="phantom classifier")
    ecfg = EvaluationConfig(bootstrap=bootstrap, distribution_bootstrap=min(distribution_bootstrap, bootstrap),
                            analysis_size=128, progress=progress, tsne=tsne, tsne_max=500)
    real = set_from_arrays(list(heldout), list(heldout_images), ext, ecfg, name="held-out phantom")
    syn = set_from_arrays(list(synthetic), list(synthetic_images), ext, ecfg, name="generated")
    results, figures = evaluate_sets(real, syn, ecfg, extractor_info={"kind": "classifier", "classes": ext.class_names})

    cols = [LABELS.index(c) for c in trained]

    def per_class(scores: np.ndarray, recs: Sequence[Record]) -> dict[str, float]:
        res = compute_per_class_auroc(scores[:, cols], label_matrix(recs)[:, cols], class_names=list(trained))
        return {c: res[c] for c in trained}

    suite_auc = results["per_class"].get("auroc", {})
    gen_auc = {c: float(suite_auc.get(c, float("nan"))) for c in trained}  # the suite's, on the prompts' labels
    real_auc = per_class(real.features.scores, heldout)
    mean_ci = bootstrap_ci(lambda sc, lab: compute_per_class_auroc(sc, lab)["macro"],
                           syn.features.scores[:, cols], label_matrix(synthetic)[:, cols], n_boot=bootstrap, seed=0)
    rf = real.features.features
    half = len(rf) // 2
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(rf))
    results["demo"] = {
        "trained_findings": list(trained),
        "auroc_generated_per_class": gen_auc,
        "auroc_real_per_class": real_auc,
        "auroc_generated_mean": finite_mean(gen_auc.values()),
        "auroc_generated_mean_ci": [mean_ci.low, mean_ci.high],
        "auroc_real_mean": finite_mean(real_auc.values()),
        "fid_real_vs_generated": float(results["metrics"]["fid"]["value"]),
        "fid_real_half_vs_half": float(compute_fid(rf[perm[:half]], rf[perm[half:]])),
        "n_real": len(heldout),
        "n_generated": len(synthetic),
    }
    return results, figures


def _prompt_grid(title: str, prompts: Sequence[str], images: np.ndarray, per_prompt: int, section: str):
    from chexgen.evaluation.plots import grid_png
    from chexgen.evaluation.report import Figure

    rows = [list(images[i * per_prompt:(i + 1) * per_prompt]) for i in range(len(prompts))]
    caption = " | ".join(f"row {i + 1}: “{p}”" for i, p in enumerate(prompts))
    return Figure(title, grid_png(rows), caption, section=section, alt=title)


def _control_part(pipe, control_dir: Path, trained: Sequence[str], cfg: DemoConfig, out: Path,
                  provenance: dict[str, Any]) -> tuple[dict[str, Any], list, list[Record]]:
    """Generate from real SIIM masks / NIH boxes with and without the adapter (same seeds); measure where it acts."""
    import torch

    from chexgen.data.imageio import save_png
    from chexgen.demo.control import localisation_ratio, one_hot_labels, real_control_examples
    from chexgen.evaluation.plots import grid_png
    from chexgen.evaluation.report import Figure
    from chexgen.generation.backends import ChexGenBackend
    from chexgen.generation.writer import write_synthetic_png
    from chexgen.pipelines import ChexGenControlPipeline
    from chexgen.pipelines.base import image_generators, resolve_sampling

    examples = real_control_examples(cfg.n_control_masks, cfg.n_control_boxes, trained, seed=cfg.seed)
    if not examples:
        return {}, [], []
    cpipe = ChexGenControlPipeline.from_pretrained(control_dir, base=pipe)
    sampling = resolve_sampling(pipe.config, cfg.sampler, cfg.steps, cfg.guidance)
    control_provenance = {**ChexGenBackend(pipe, sampling, str(provenance["model"]), control=cpipe).settings(),
                          "chexgen_version": provenance["chexgen_version"]}
    k = cfg.control_images
    conds = [e.condition for e in examples]
    prompts = [e.prompt for e in examples]
    seeds = [cfg.seed + 30_000 + i for i in range(len(conds) * k)]
    kw = dict(num_images_per_condition=k, seeds=seeds, sampler=cfg.sampler, num_inference_steps=cfg.steps,
              guidance_scale=cfg.guidance, batch_size=cfg.batch_size, progress=cfg.progress)
    log.info("control: %d real conditions x %d images, with and without the adapter, and with a blank condition",
             len(conds), k)
    on = cpipe(prompts, conds, conditioning_scale=1.0, **kw)
    off = cpipe(prompts, conds, conditioning_scale=0.0, **kw)
    # the same adapter given a blank condition ("nothing marked"): separates the effect of the mask / box itself
    # from what the adapter changes everywhere whatever it is shown
    blank = cpipe.generate_rendered(on.prompts, torch.zeros_like(on.conditions), image_generators(on.seeds), sampling,
                                    batch_size=cfg.batch_size, progress=cfg.progress)
    on_img, off_img = on.images[:, 0].float().numpy(), off.images[:, 0].float().numpy()
    blank_img = blank[:, 0].float().numpy()
    drawn = on.conditions[:, 0].float().numpy()

    rows, fig_rows, records = [], [], []
    for i, ex in enumerate(examples):
        idx = list(range(i * k, (i + 1) * k))
        ratio = finite_mean(localisation_ratio(on_img[j], off_img[j], drawn[j] > 0) for j in idx)
        vs_blank = finite_mean(localisation_ratio(on_img[j], blank_img[j], drawn[j] > 0) for j in idx)
        rows.append({"condition_id": ex.condition.id, "source": ex.source, "label": ex.label, "prompt": ex.prompt,
                     "area_fraction": float((drawn[idx[0]] > 0).mean()), "localisation_ratio": ratio,
                     "condition_localisation_ratio": vs_blank,
                     "blank_condition_change": float(np.mean(np.abs(blank_img[idx] - off_img[idx])))})
        fig_rows.append([drawn[idx[0]], *off_img[idx], *on_img[idx]])
        for j in idx:
            rid = f"control_{j:04d}"
            rel, cond_rel = f"images/control/{rid}.png", f"images/control/{rid}_condition.png"
            prov = write_synthetic_png(out / rel, on_img[j], rid,
                                       image_provenance(control_provenance, ex.prompt, seeds[j], ex.condition.id))
            save_png(out / cond_rel, drawn[j])
            records.append(Record(
                id=rid, image=rel, dataset="chexgen-demo", view="PA", width=on_img.shape[2], height=on_img.shape[1],
                labels=one_hot_labels(ex.label), impression=ex.prompt, synthetic=True,
                provenance=prov,
                extra={"condition_source": f"{ex.source} (torchxrayvision)", "condition_id": ex.condition.id,
                       "condition_image": cond_rel},
            ))
    by_source = {src: finite_mean(r["localisation_ratio"] for r in rows if r["source"] == src)
                 for src in dict.fromkeys(r["source"] for r in rows)}
    by_source_blank = {src: finite_mean(r["condition_localisation_ratio"] for r in rows if r["source"] == src)
                       for src in by_source}
    summary = {"adapter": str(control_dir), "control_guidance": cpipe.control_guidance,
               "n_conditions": len(rows), "images_per_condition": k,
               "localisation_ratio_mean": finite_mean(r["localisation_ratio"] for r in rows),
               "localisation_ratio_by_source": by_source,
               "condition_localisation_ratio_mean": finite_mean(r["condition_localisation_ratio"] for r in rows),
               "condition_localisation_ratio_by_source": by_source_blank,
               "blank_condition_change_mean": float(np.mean([r["blank_condition_change"] for r in rows])),
               "examples": rows}
    caption = (f"Each row: the condition as the adapter sees it, {k} image(s) without the adapter, then the same "
               f"seed(s) with it. Rows: " + " | ".join(f"{i + 1}: {r['source']}, “{r['prompt']}”"
                                                      for i, r in enumerate(rows)))
    figure = Figure("Real SIIM-ACR masks and NIH boxes: without / with the adapter", grid_png(fig_rows), caption,
                    section="Spatial control (real masks and boxes)", alt="control grid")
    return summary, [figure], records


def _demo_tables(d: dict[str, Any]) -> list[dict[str, Any]]:
    """The quality-bar numbers (and the control summary) as report tables, shown first."""
    rows = [[c, d["auroc_generated_per_class"][c], d["auroc_real_per_class"][c]] for c in d["trained_findings"]]
    rows.append(["mean", d["auroc_generated_mean"], d["auroc_real_mean"]])
    tables = [
        {"title": "Demo summary: does the phantom classifier recognise the prompted findings?", "id": "demo-auroc",
         "columns": ["finding", "AUROC on generated (prompt labels)", "AUROC on real held-out phantoms"],
         "rows": rows,
         "note": (f"FID on the classifier's features: real vs generated {d['fid_real_vs_generated']:.2f}, "
                  f"real half vs half {d['fid_real_half_vs_half']:.2f}. {d['n_generated']} generated images from "
                  f"the impressions of {d['n_real']} held-out phantom cases.")},
    ]
    c = d.get("control")
    if c:
        tables.append({
            "title": "Spatial control: where does the adapter change the image?", "id": "demo-control",
            "columns": ["source", "condition", "prompt", "area of image", "localisation ratio",
                        "vs blank condition", "blank condition: mean |change|"],
            "rows": [[r["source"], r["condition_id"], r["prompt"], r["area_fraction"], r["localisation_ratio"],
                      r["condition_localisation_ratio"], r["blank_condition_change"]] for r in c["examples"]],
            "note": ("Localisation ratio: mean |with adapter - without| inside the mask / box over the same outside "
                     f"it (same seeds); 1 = no spatial preference. Mean {c['localisation_ratio_mean']:.2f}; "
                     f"{c.get('control_guidance', 'shared')} control guidance. 'vs blank condition': the same "
                     "ratio against the adapter given a blank condition, i.e. the effect of the mask / box alone "
                     f"(mean {c['condition_localisation_ratio_mean']:.2f}); the last column is how much the "
                     "adapter changes the picture (mean |difference|, images in [0, 1]) when shown nothing."),
        })
    return tables


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo (see module doc); returns the path of ``report.html``."""
    from chexgen.curation.report_writer import TemplateReportWriter
    from chexgen.data.imageio import load_gray
    from chexgen.data.manifest import read_manifest
    from chexgen.downstream.classifier import load_classifier
    from chexgen.evaluation.report import write_report
    from chexgen.phantom.cohort import CohortConfig, write_cohort
    from chexgen.pipelines import ChexGenPipeline

    t0 = time.perf_counter()
    out = Path(cfg.out)
    pipeline_dir, classifier_dir, prevalence = _resolve_model(cfg)
    if classifier_dir is None:
        raise ChexgenError(f"no phantom classifier found beside {pipeline_dir} (expected classifier/config.json); "
                           "give one with --classifier")
    out.mkdir(parents=True, exist_ok=True)
    log.info("demo: model %s", pipeline_dir)
    pipe = ChexGenPipeline.from_pretrained(pipeline_dir).to(cfg.device, precision=cfg.precision)
    if cfg.guidance is None:
        cfg = replace(cfg, guidance=pipe.config.guidance_scale)
    classifier = load_classifier(classifier_dir)
    trained = [c for c in classifier.class_names if c != "No Finding"]

    # 1. held-out phantom cohort: the ground truth the generated images are compared with
    cohort = CohortConfig(n=cfg.n_heldout, size=pipe.config.resolution, seed=cfg.heldout_seed,
                          prevalence=str(prevalence) if prevalence else "mimic", workers=cfg.workers)
    info = write_cohort(cohort, out / "heldout_phantom", TemplateReportWriter(seed=cohort.seed), progress=cfg.progress)
    heldout = read_manifest(info["manifest"])
    root = Path(info["manifest"]).parent
    heldout_images = np.stack([load_gray(r.resolve(r.image, root)) for r in heldout])

    from chexgen import __version__
    from chexgen.generation.backends import ChexGenBackend
    from chexgen.pipelines.base import resolve_sampling

    sampling = resolve_sampling(pipe.config, cfg.sampler, cfg.steps, cfg.guidance)
    cfg = replace(cfg, sampler=sampling.sampler, steps=sampling.steps, guidance=sampling.guidance)
    provenance = {**ChexGenBackend(pipe, sampling, str(pipeline_dir)).settings(), "chexgen_version": __version__}
    # 2. generate: paired set, showcase prompts, real NLMCXR impressions
    paired_prompts = [r.impression or r.report or "" for r in heldout]
    paired_seeds = [cfg.seed + i for i in range(len(heldout))]
    paired = _generate(pipe, paired_prompts, paired_seeds, cfg, "paired with held-out cases")
    syn_records = _synthetic_records(heldout, paired_prompts, paired_seeds, paired, out, "paired", provenance)

    k = cfg.images_per_prompt
    show = _showcase(heldout, trained)
    show_prompts = [r.impression for r in show for _ in range(k)]
    show_seeds = [cfg.seed + 10_000 + i for i in range(len(show_prompts))]
    show_images = _generate(pipe, show_prompts, show_seeds, cfg, "showcase")
    nlm = nlmcxr_prompts(cfg.n_nlmcxr, trained, seed=cfg.seed)
    nlm_prompts = [r.impression for r in nlm for _ in range(k)]
    nlm_seeds = [cfg.seed + 20_000 + i for i in range(len(nlm_prompts))]
    nlm_images = _generate(pipe, nlm_prompts, nlm_seeds, cfg, "NLMCXR impressions")
    extra_records = (
        _synthetic_records([r for r in show for _ in range(k)], show_prompts, show_seeds, show_images, out,
                           "showcase", provenance)
        + _synthetic_records([r for r in nlm for _ in range(k)], nlm_prompts, nlm_seeds, nlm_images, out,
                             "nlmcxr", provenance)
    )
    for r in extra_records[len(show_prompts):]:
        r.extra["source"] = "nlmcxr (torchxrayvision)"
    control_dir = _resolve_control(cfg, pipeline_dir)
    control_summary, control_figures, control_records = {}, [], []
    if control_dir is not None and cfg.n_control_masks + cfg.n_control_boxes > 0:
        control_summary, control_figures, control_records = _control_part(pipe, control_dir, trained, cfg, out,
                                                                          provenance)
    elif cfg.n_control_masks + cfg.n_control_boxes > 0:
        log.info("demo: no ControlNet adapter beside the model; the spatial-control part is skipped")
    write_manifest(out / "synthetic_manifest.jsonl", syn_records + extra_records + control_records)

    # 3. evaluate and report
    results, figures = evaluate_demo_model(classifier, heldout, heldout_images, syn_records, paired, trained,
                                           bootstrap=cfg.bootstrap, progress=cfg.progress)
    figures = list(figures)
    if show:
        figures.insert(0, _prompt_grid("Showcase: one prompt per finding", [r.impression for r in show], show_images,
                                       k, "Generated images per prompt"))
    if nlm:
        figures.insert(1, _prompt_grid("Real radiology impressions (Indiana University / NLMCXR)",
                                       [r.impression for r in nlm], nlm_images, k, "Generated images per prompt"))
    pos = int(bool(show)) + int(bool(nlm))
    figures[pos:pos] = control_figures
    if control_summary:
        results["demo"]["control"] = control_summary
    results["tables"] = _demo_tables(results["demo"])
    results["demo"]["wall_seconds"] = round(time.perf_counter() - t0, 1)
    results["demo"]["config"] = asdict(cfg)
    results["demo"]["classifier"] = str(classifier_dir)
    _, html = write_report(out, results, figures, title="chexgen demo: bundled phantom-trained model")
    d = results["demo"]
    log.info("demo: AUROC generated %.3f (real %.3f); FID real-vs-generated %.2f (real halves %.2f); %.0f s",
             d["auroc_generated_mean"], d["auroc_real_mean"], d["fid_real_vs_generated"], d["fid_real_half_vs_half"],
             d["wall_seconds"])
    return html
