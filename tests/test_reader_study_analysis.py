"""Reader-study analysis against hand-computed values, and end to end on a study answered through the app."""

from __future__ import annotations

import math

import pandas as pd
import pytest

pytest.importorskip("krippendorff")
pytest.importorskip("fastapi")
from _reader_data import create_tiny_study, login  # noqa: E402
from bs4 import BeautifulSoup  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from chexgen.cli import main  # noqa: E402
from chexgen.reader_study.analysis import (  # noqa: E402
    analyse_study,
    compare_two,
    krippendorff_alpha,
    load_answers,
    proportion_test,
    rater_agreement,
    weighted_kappa,
)
from chexgen.reader_study.app import create_app  # noqa: E402
from chexgen.reader_study.study import load_key  # noqa: E402


def test_weighted_kappa_by_hand():
    a = [-2, -1, 0, 1, 2]
    b = [-2, -1, 0, 2, 2]
    # Categories 0..4; one disagreement (3 vs 4). Rater a's margins are all 1, b's are [1, 1, 1, 0, 2], n = 5.
    # Quadratic: sum w*O = (3-4)^2 = 1; sum w*E = (1/5) * sum_j b_j * sum_i (i-j)^2
    #   = (1/5) * (30 + 15 + 10 + 0 + 2*30) = 23  ->  kappa = 1 - 1/23 = 22/23.
    assert weighted_kappa(a, b, "quadratic") == pytest.approx(22 / 23)
    # Linear: sum_i |i-j| = 10, 7, 6, 7, 10 -> sum w*E = (10 + 7 + 6 + 0 + 20) / 5 = 8.6 -> 1 - 1/8.6 = 38/43.
    assert weighted_kappa(a, b, "linear") == pytest.approx(38 / 43)
    # Unweighted on two categories: po = 3/4, pe = (2*2 + 2*2)/16 = 1/2 -> kappa = 1/2.
    assert weighted_kappa([1, 1, 0, 0], [1, 0, 0, 0], None, (0, 1)) == pytest.approx((0.75 - (0.5 * 0.25 + 0.5 * 0.75)) /
                                                                                     (1 - (0.5 * 0.25 + 0.5 * 0.75)))


def test_krippendorff_alpha_by_hand():
    # Two raters, three units: (1,1), (2,2), (3,4); n = 6 pairable values 1,1,2,2,3,4.
    # Interval: D_o = 2*(3-4)^2 / 6 = 1/3; D_e = 2*41 / (6*5) = 41/15 -> alpha = 1 - 5/41 = 36/41.
    m = [[1, 2, 3], [1, 2, 4]]
    assert krippendorff_alpha(m, "interval", None) == pytest.approx(36 / 41)
    # Ordinal on the scale (1..4 as -2..+1; +2 unused): delta(c,k) = (sum_{g=c..k} n_g - (n_c+n_k)/2)^2 with
    # n = 2,2,1,1: delta = 4 (-2,-1), 12.25 (-2,0), 20.25 (-2,1), 2.25 (-1,0), 6.25 (-1,1), 1 (0,1).
    # D_o = 2*1/6 = 1/3; D_e = 2*(16 + 24.5 + 40.5 + 4.5 + 12.5 + 1) / 30 = 6.6 -> alpha = 1 - 1/19.8 = 94/99.
    assert krippendorff_alpha([[-2, -1, 0], [-2, -1, 1]], "ordinal") == pytest.approx(94 / 99)
    # missing answers are allowed: a unit rated once is not pairable and drops out
    assert krippendorff_alpha([[1, 2, math.nan], [1, 0, 2]]) == pytest.approx(krippendorff_alpha([[1, 2], [1, 0]]))
    # one value only: no expected disagreement, alpha undefined
    assert math.isnan(krippendorff_alpha([[1, 1, math.nan], [1, 1, 2]]))


def _frame(rater, cases, scores):
    return pd.DataFrame({"rater": rater, "case": cases, "agreement": scores})


def test_wilcoxon_paired_by_hand():
    # differences 1, -2, 3, 4, 5, 6: ranks 1..6, W- = 2, W+ = 19. Exact two-sided p = 2 * P(W <= 2) with
    # n = 6: subsets of {1..6} summing to <= 2 are {}, {1}, {2} -> 2 * 3/64 = 0.09375.
    cases = [f"c{i}" for i in range(6)]
    a = _frame("r", cases, [1, 0, 2, 2, 2, 2])
    b = _frame("r", cases, [0, 2, -1, -2, -3, -4])
    assert (a.agreement - b.agreement).tolist() == [1, -2, 3, 4, 5, 6]
    r = compare_two(a, b)
    assert r["test"] == "wilcoxon" and r["n_pairs"] == 6
    assert r["statistic"] == 2 and r["p"] == pytest.approx(6 / 64)
    # identical scores: p = 1
    assert compare_two(a, a)["p"] == 1.0


def test_mann_whitney_unpaired_by_hand():
    # no case read for both sources: a = {1, 2}, b = {3, 4, 5}: U_a = 0; exact two-sided p = 2 * 1/C(5,2) = 0.2
    a = _frame("r", ["c1", "c2"], [1, 2])
    b = _frame("r", ["c3", "c4", "c5"], [3, 4, 5])
    r = compare_two(a, b)
    assert r["test"] == "mann-whitney" and r["statistic"] == 0 and r["p"] == pytest.approx(0.2)


def test_proportion_test_by_hand():
    r = proportion_test(9, 10)
    # two-sided exact binomial: 2 * (C(10,9) + C(10,10)) / 2^10 = 22/1024
    assert r["p"] == pytest.approx(22 / 1024)
    z, p, n = 1.959963984540054, 0.9, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((centre - half, centre + half))
    assert proportion_test(5, 10)["p"] == pytest.approx(1.0)


def test_rater_agreement_table():
    df = pd.DataFrame({
        "rater": ["a"] * 5 + ["b"] * 5, "item": [f"i{k}" for k in range(5)] * 2, "source": "m",
        "agreement": [-2, -1, 0, 1, 2, -2, -1, 0, 2, 2], "realism": None,
    })
    t = rater_agreement(df)
    kappa = t[(t.scope == "all") & (t.measure == "cohen_kappa (quadratic)")].iloc[0]
    assert kappa.raters == "a vs b" and kappa.n_items == 5 and kappa.value == pytest.approx(22 / 23)
    assert t[(t.scope == "all") & t.measure.str.startswith("krippendorff")].iloc[0].value == pytest.approx(
        krippendorff_alpha([[-2, -1, 0, 1, 2], [-2, -1, 0, 2, 2]], "ordinal"))


SCORES = {"real": 2, "alpha": 1, "beta": -1}


def _answer_everything(study, tokens):
    key = {it["id"]: it for it in load_key(study)["items"]}
    for name in ("ann", "bob"):
        c = TestClient(create_app(study))
        csrf = login(c, tokens[name])
        for pos in range(len(key)):
            item = key[c.get(f"/api/item/{pos}").json()["item"]]
            score = SCORES[item["source"]] - (1 if name == "bob" and item["source"] != "real" else 0)
            realism = ("synthetic" if item["synthetic"] else "real") if name == "ann" else "real"
            body = {"item": item["id"], "agreement": score, "realism": realism, "confidence": 3,
                    "comment": "=HYPERLINK(\"x\")" if pos == 0 else None}
            assert c.post("/api/answer", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200


def test_analyse_end_to_end(tmp_path, capsys):
    study, tokens = create_tiny_study(tmp_path, cases=4)
    _answer_everything(study, tokens)
    df = load_answers(study)
    assert len(df) == 24 and set(df.source) == {"real", "alpha", "beta"}
    assert main(["reader-study", "analyse", str(study.root)]) == 0
    out = capsys.readouterr().out
    assert "agreement alpha" in out and "real-or-synthetic accuracy" in out
    a = study.root / "analysis"
    for f in ("report.html", "scores.csv", "comparisons.csv", "rater_agreement.csv", "realism.csv",
              "findings.csv", "answers_with_key.csv", "agreement_distribution.png"):
        assert (a / f).is_file(), f
    scores = pd.read_csv(a / "scores.csv")
    s = scores.set_index(["source", "rater"])
    assert s.loc[("alpha", "ann"), "mean"] == 1 and s.loc[("alpha", "bob"), "mean"] == 0
    assert s.loc[("alpha", "all"), "mean"] == 0.5 and s.loc[("beta", "all"), "n"] == 8
    # sd of four 1s and four 0s (ddof 1) = sqrt(8 * 0.25 / 7)
    assert s.loc[("alpha", "all"), "sd"] == pytest.approx(math.sqrt(2 / 7))
    assert s.loc[("real", "all"), "share_+2"] == 1.0
    comp = pd.read_csv(a / "comparisons.csv").set_index(["source_a", "source_b", "rater"])
    row = comp.loc[("alpha", "beta", "all")]
    assert row.test == "wilcoxon" and row.n_pairs == 8 and row.mean_diff == 2 and row.p < 0.05
    realism = pd.read_csv(a / "realism.csv").set_index(["rater", "source"])
    assert realism.loc[("ann", "all"), "accuracy"] == 1 and realism.loc[("bob", "all"), "accuracy"] == pytest.approx(4 / 12)
    pooled = realism.loc[("all", "all")]
    assert pooled.correct == 16 and pooled.n == 24
    assert pooled.p == pytest.approx(proportion_test(16, 24)["p"])
    assert realism.loc[("bob", "alpha"), "called_real"] == 1.0
    findings = pd.read_csv(a / "findings.csv")
    assert set(findings.finding) >= {"No Finding", "Pleural Effusion"}
    # the report renders every table, escapes free text, and the CSV guards formulas
    soup = BeautifulSoup((a / "report.html").read_text(), "html.parser")
    assert {t["id"] for t in soup.find_all("table")} >= {"scores", "comparisons", "agreement", "realism", "findings",
                                                         "comments"}
    assert "=HYPERLINK" in soup.find(id="comments").text
    answers = (a / "answers_with_key.csv").read_text()
    assert "'=HYPERLINK" in answers
    # re-running replaces the folder as a whole
    assert main(["reader-study", "analyse", str(study.root), "--kappa-weights", "linear"]) == 0
    assert "cohen_kappa (linear)" in (a / "rater_agreement.csv").read_text()
    assert not [p for p in study.root.iterdir() if p.name.startswith(".analysis")]


def test_analyse_single_rater_agreement_only(tmp_path):
    study, tokens = create_tiny_study(tmp_path, raters=("ann",), cases=3, tasks=["agreement"])
    key = {it["id"]: it for it in load_key(study)["items"]}
    c = TestClient(create_app(study))
    csrf = login(c, tokens["ann"])
    for pos in range(len(key)):
        item = key[c.get(f"/api/item/{pos}").json()["item"]]
        body = {"item": item["id"], "agreement": SCORES[item["source"]], "realism": "real", "confidence": 1}
        assert c.post("/api/answer", json=body, headers={"X-CSRF-Token": csrf}).status_code == 200
    res = analyse_study(study)
    assert res.realism.empty and set(res.answers.realism.dropna()) == set()  # the task was off: not stored
    assert res.agreement.empty or res.agreement["value"].isna().all()
    row = res.comparisons.set_index(["source_a", "source_b", "rater"]).loc[("alpha", "beta", "ann")]
    assert row.test == "wilcoxon" and row.n_pairs == 3 and row.mean_diff == 2
    assert (res.out / "report.html").is_file() and "Real or synthetic?" not in (res.out / "report.html").read_text()
