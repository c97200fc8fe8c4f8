"""End to end: manifests -> suite -> report.html + metrics.json, through the library and the CLI."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import torch

from chexgen.cli import main
from chexgen.data.imageio import save_png
from chexgen.data.manifest import Mask, Record, write_manifest
from chexgen.evaluation import ClassifierExtractor, EvaluationConfig, evaluate_manifests
from chexgen.evaluation.matching import match_to_real


class TinyClassifier(torch.nn.Module):
    """A stand-in for a chexgen-trained classifier: [B,1,H,W] in [0,1] -> features and 14 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 5, stride=4)
        self.head = torch.nn.Linear(8, 14)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.conv(x).relu().mean((2, 3))
        return {"features": f, "scores": torch.sigmoid(self.head(f))}


def _image(seed: int, effusion: bool, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.35 + 0.2 * np.sin(xx * 6 + rng.uniform(0, 6)) * np.cos(yy * 4) + 0.05 * rng.normal(size=xx.shape)
    if effusion:
        img[int(size * 0.65):, :] += 0.3
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """10 real images; 2 synthetic seeds per real report; s3_0 is an exact copy of r3 (planted)."""
    root = tmp_path_factory.mktemp("cohort")
    (root / "real").mkdir()
    (root / "syn").mkdir()
    (root / "syn_b").mkdir()
    real, syn, syn_b = [], [], []
    for i in range(10):
        eff = i % 2 == 0
        text = f"Case {i}: {'right pleural effusion' if eff else 'no acute findings'}."
        save_png(root / f"real/r{i}.png", _image(i, eff))
        real.append(Record(id=f"r{i}", image=f"real/r{i}.png", impression=text,
                           labels={"Pleural Effusion": int(eff), "No Finding": int(not eff)}))
        for k in range(2):
            img = _image(i, eff) if (i, k) == (3, 0) else _image(1000 + 10 * i + k, eff)
            save_png(root / f"syn/s{i}_{k}.png", img)
            mask = np.zeros((64, 64), np.float32)
            mask[44:, :] = 1.0 if eff else 0.0
            save_png(root / f"syn/m{i}_{k}.png", mask)
            syn.append(Record(id=f"s{i}_{k}", image=f"syn/s{i}_{k}.png", synthetic=True,
                              masks=[Mask(name="effusion", path=f"syn/m{i}_{k}.png")],
                              provenance={"prompt": f"sex:Male, age:60.0, race:White. {text}", "seed": k}))
            save_png(root / f"syn_b/t{i}_{k}.png", _image(5000 + 10 * i + k, eff))
            syn_b.append(Record(id=f"t{i}_{k}", image=f"t{i}_{k}.png", synthetic=True,
                                extra={"source_id": f"r{i}"}, provenance={"prompt": text, "seed": k}))
    write_manifest(root / "real.jsonl", real)
    write_manifest(root / "syn.jsonl", syn)
    write_manifest(root / "syn_b" / "syn_b.jsonl", syn_b)  # image paths relative to its own folder
    return root


def test_matching_by_prompt_and_source_id(cohort):
    from chexgen.data.manifest import read_manifest

    real = read_manifest(cohort / "real.jsonl")
    syn = read_manifest(cohort / "syn.jsonl")
    syn_b = read_manifest(cohort / "syn_b" / "syn_b.jsonl")
    assert match_to_real(real, syn) == [i // 2 for i in range(20)]  # demographic prefix stripped
    assert match_to_real(real, syn_b) == [i // 2 for i in range(20)]  # by source id


def test_suite_writes_complete_report(cohort, tmp_path):
    torch.manual_seed(0)
    ex = ClassifierExtractor(TinyClassifier(), input_size=64, name="tiny")
    cfg = EvaluationConfig(bootstrap=30, distribution_bootstrap=10, analysis_size=64, kid_subsets=5,
                           progress=False)

    def segmenter(x):  # thresholds the bright bottom band the effusion images carry
        return (x[:, :, :, :].mean(-1, keepdim=True).expand_as(x) > 0.55).float()

    res = evaluate_manifests(cohort / "real.jsonl", cohort / "syn.jsonl", tmp_path / "out", ex, cfg,
                             compare_manifest=cohort / "syn_b" / "syn_b.jsonl", segmenter=segmenter)
    m = res["metrics"]
    for key in ("fid", "kid", "precision", "recall", "diversity_ssim", "diversity_ms_ssim", "pearson",
                "auroc_macro", "memorised_fraction", "nearest_train_ssim", "control_dice", "control_iou"):
        assert key in m, key
        assert np.isfinite(m[key]["value"]), key
    for key in ("fid", "pearson", "diversity_ssim"):
        assert m[key]["low"] <= m[key]["value"] <= m[key]["high"], key
    assert res["inputs"]["n_matched"] == 20 and res["inputs"]["n_prompts"] == 10
    assert res["memorisation"]["flagged_ids"] == ["s3_0"]
    assert res["memorisation"]["closest"][0]["ssim_train_id"] == "r3"
    assert m["memorised_fraction"]["value"] == pytest.approx(1 / 20)
    assert m["control_dice"]["value"] > 0.5
    tests = res["comparison"]["tests"]
    assert {"diversity_ssim", "feature_cosine_distance", "score_abs_error"} <= set(tests)
    assert tests["diversity_ssim"]["n"] == 10

    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["metrics"]["fid"]["value"] == pytest.approx(m["fid"]["value"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert '<table class="metrics">' in html and "Memorisation" in html and "Comparison" in html
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(pngs) >= 3  # t-SNE, per-finding grids, closest pairs
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "http://" not in html and "https://" not in html  # self-contained


def test_cli_with_a_torchscript_classifier(cohort, tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "classifier.pt"
    torch.jit.script(TinyClassifier()).save(str(path))
    out = tmp_path / "cli_out"
    code = main(["evaluate", "--real", str(cohort / "real.jsonl"), "--synthetic", str(cohort / "syn.jsonl"),
                 "--out", str(out), "--features", str(path), "--image-size", "64", "--analysis-size", "64",
                 "--bootstrap", "20", "--distribution-bootstrap", "5", "--max-images", "8", "--no-tsne"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert {"fid", "pearson", "memorised_fraction"} <= set(summary)
    data = json.loads((out / "metrics.json").read_text())
    assert data["inputs"]["n_synthetic"] == 8 and data["inputs"]["n_real"] == 8
    assert data["inputs"]["n_matched"] == 8  # the matched sources were kept when capping real
    assert (out / "report.html").is_file()

    assert main(["evaluate", "--real", str(cohort / "nope.jsonl"), "--synthetic", str(cohort / "syn.jsonl"),
                 "--out", str(out)]) == 2
    assert "manifest not found" in capsys.readouterr().err


@pytest.mark.slow
def test_report_renders_in_headless_chromium(cohort, tmp_path):
    """Open the report in a real browser: the metric table and every inlined image must render."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report_html.py"
    spec = importlib.util.spec_from_file_location("check_report_html", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    browser = mod.find_browser(None)
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    torch.manual_seed(0)
    ex = ClassifierExtractor(TinyClassifier(), input_size=64, name="tiny")
    cfg = EvaluationConfig(bootstrap=10, distribution_bootstrap=5, analysis_size=64, kid_subsets=3, progress=False)
    evaluate_manifests(cohort / "real.jsonl", cohort / "syn.jsonl", tmp_path, ex, cfg)
    seen = mod.probe_report(tmp_path / "report.html", browser)
    assert mod.check(seen, ("fid", "pearson", "memorised_fraction"), min_images=3) == []
    assert seen["images_decoded"] == seen["images"] >= 3


def test_in_memory_sets_for_library_callers():
    """The demo path: images already in memory, evaluated without touching files."""
    from chexgen.evaluation import evaluate_sets, set_from_arrays

    torch.manual_seed(0)
    ex = ClassifierExtractor(TinyClassifier(), input_size=64)
    cfg = EvaluationConfig(bootstrap=5, distribution_bootstrap=3, analysis_size=64, kid_subsets=2, tsne=False,
                           progress=False)
    real_recs = [Record(id=f"r{i}", impression=f"case {i}", labels={"Edema": i % 2}) for i in range(6)]
    syn_recs = [Record(id=f"s{i}", synthetic=True, extra={"source_id": f"r{i // 2}"}) for i in range(6)]
    real = set_from_arrays(real_recs, [_image(i, i % 2 == 0) for i in range(6)], ex, cfg, "real")
    syn = set_from_arrays(syn_recs, [_image(100 + i, (i // 2) % 2 == 0) for i in range(6)], ex, cfg, "syn")
    res, figs = evaluate_sets(real, syn, cfg)
    assert res["inputs"]["n_matched"] == 6 and res["diversity"]["n_groups"] == 3
    assert np.isfinite(res["metrics"]["fid"]["value"]) and res["memorisation"]["n_flagged"] == 0
    assert any(f.section == "Memorisation" for f in figs)


def test_summary_tables_come_first_and_are_escaped():
    from chexgen.evaluation.report import render_html

    results = {"inputs": {"n": 3}, "metrics": {},
               "tables": [{"title": "Summary <b>", "columns": ["finding", "AUROC"], "note": "a < b",
                           "rows": [["Edema", 0.91234567], ["<script>", float("nan")]]}]}
    page = render_html(results)
    assert page.index("Summary &lt;b&gt;") < page.index("<h2>Inputs</h2>")
    assert "<td>0.9123</td>" in page and "&lt;script&gt;" in page and "<script>" not in page
    assert '<p class="note">a &lt; b</p>' in page and "<td>–</td>" in page  # NaN shown as a dash


class _Evil:
    """Unpickling this runs code: it writes a proof file (what a malicious --features file would do)."""

    def __init__(self, proof: str) -> None:
        self.proof = proof

    def __reduce__(self):
        return (open, (self.proof, "w"))


def _cli(cohort, out, *extra):
    return main(["evaluate", "--real", str(cohort / "real.jsonl"), "--synthetic", str(cohort / "syn.jsonl"),
                 "--out", str(out), "--image-size", "64", "--analysis-size", "64", "--bootstrap", "5",
                 "--distribution-bootstrap", "3", "--max-images", "6", "--no-tsne", *extra])


def test_pickled_features_file_needs_trust_pickle(cohort, tmp_path, capsys):
    proof = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Evil(str(proof)), evil)
    assert _cli(cohort, tmp_path / "out", "--features", str(evil)) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and str(evil) in err and len(err.strip().splitlines()) == 1
    assert not proof.exists()  # nothing from the file ran
    assert _cli(cohort, tmp_path / "out", "--features", "xrv", "--random-init", "--segmenter", str(evil)) == 2
    assert not proof.exists()

    # a pickled module the user made loads with the flag
    torch.manual_seed(0)
    mine = tmp_path / "mine.pt"
    torch.save(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten()), mine)
    assert _cli(cohort, tmp_path / "ok", "--features", str(mine)) == 2
    assert _cli(cohort, tmp_path / "ok", "--features", str(mine), "--trust-pickle") == 0
    assert (tmp_path / "ok" / "metrics.json").is_file()


def test_unreadable_images_are_rejects_and_the_run_finishes(cohort, tmp_path, capsys):
    import shutil

    from chexgen.data.manifest import read_manifest

    syn = read_manifest(cohort / "syn.jsonl")
    work = tmp_path / "w"
    shutil.copytree(cohort / "syn", work / "syn")
    (work / "syn" / "s1_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (work / "syn" / "s2_0.png").unlink()
    from PIL import Image

    Image.new("L", (8000, 7000)).save(work / "syn" / "s2_1.png")  # 56 MP: above the 50 MP limit
    lines = [json.dumps(r.to_dict()) for r in syn[:8]]
    lines.insert(3, "{not json")
    (work / "syn.jsonl").write_text("\n".join(lines) + "\n")
    shutil.copy(cohort / "real.jsonl", work / "real.jsonl")
    shutil.copytree(cohort / "real", work / "real")
    rc = main(["evaluate", "--real", str(work / "real.jsonl"), "--synthetic", str(work / "syn.jsonl"),
               "--out", str(tmp_path / "out"), "--features", "xrv", "--random-init", "--analysis-size", "64",
               "--bootstrap", "5", "--distribution-bootstrap", "3", "--no-tsne"])
    assert rc == 1
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rejects}
    assert set(by_id) == {None, "s1_0", "s2_0", "s2_1"}
    assert by_id[None]["line"] == 4 and "not valid JSON" in by_id[None]["reason"]
    assert by_id["s1_0"]["line"] == 3 and "cannot read image" in by_id["s1_0"]["reason"]
    assert "not found" in by_id["s2_0"]["reason"]
    assert "megapixels, above the limit of 50" in by_id["s2_1"]["reason"]
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["inputs"]["n_synthetic"] == 5 and data["rejects"]["count"] == 4  # 8 records, 3 unreadable
    assert "rejected: 4 records" in capsys.readouterr().out


def test_decompression_bomb_is_one_line(tmp_path):
    from PIL import Image

    from chexgen.data.imageio import load_gray
    from chexgen.errors import ChexgenError

    path = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(path)  # 196 MP of zeros: a few kB on disk
    assert path.stat().st_size < 200_000
    with pytest.raises(ChexgenError, match="above the limit of 50 megapixels") as err:
        load_gray(path)
    assert str(path) in str(err.value) and "196000000 pixels" in str(err.value)


def test_non_utf8_and_corrupt_parquet_manifests_exit_2(cohort, tmp_path, capsys):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "a", "image": "a.png", "impression": "\xe9panchement pleural"}\n')
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet PAR1")
    for bad, message in ((latin, "not UTF-8 text"), (broken, "not a readable Parquet file")):
        rc = main(["evaluate", "--real", str(cohort / "real.jsonl"), "--synthetic", str(bad),
                   "--out", str(tmp_path / "out"), "--features", "xrv", "--random-init"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and str(bad) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_extra_is_one_line(cohort, tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['open_clip'] = None\n"  # as if the 'eval' extra were not installed
            "from chexgen.cli import main\n"
            f"sys.exit(main(['evaluate', '--real', {str(cohort / 'real.jsonl')!r}, '--synthetic', "
            f"{str(cohort / 'syn.jsonl')!r}, '--out', {str(tmp_path / 'o')!r}, '--features', 'clip', "
            "'--random-init']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pip install 'chexgen[eval]'" in proc.stderr and "Traceback" not in proc.stderr
