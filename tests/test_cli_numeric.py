"""Numeric options: nan / inf / negative values stop at parse time with a one-line argparse error."""

from __future__ import annotations

import pytest

from chexgen.cli import main


@pytest.mark.parametrize("argv, option", [
    (["phantom", "--n", "2", "--out", "{tmp}/p", "--seed", "-1"], "--seed"),
    (["phantom", "--n", "nan", "--out", "{tmp}/p"], "--n"),
    (["phantom", "--n", "2", "--size", "0", "--out", "{tmp}/p"], "--size"),
    (["evaluate", "--real", "r", "--synthetic", "s", "--out", "{tmp}/e", "--memorisation-ssim", "nan"],
     "--memorisation-ssim"),
    (["evaluate", "--real", "r", "--synthetic", "s", "--out", "{tmp}/e", "--bootstrap", "-5"], "--bootstrap"),
    (["prepare", "m.jsonl", "--out", "{tmp}/c", "--batch-size", "0"], "--batch-size"),
    (["curate", "--source", "nih", "--llm-rate", "inf"], "--llm-rate"),
    (["downstream", "augment", "--lr", "nan"], "--lr"),
    (["convert-official", "x.pth", "--out", "{tmp}/o", "--num-heads", "-2"], "--num-heads"),
    (["demo", "--out", "{tmp}/d", "--guidance", "nan"], "--guidance"),
    (["demo", "--out", "{tmp}/d", "--steps", "0"], "--steps"),
    (["demo", "--out", "{tmp}/d", "--n-heldout", "2.5"], "--n-heldout"),
    (["demo", "--out", "{tmp}/d", "--n-nlmcxr", "-1"], "--n-nlmcxr"),
])
def test_cli_rejects_bad_numbers_before_doing_anything(tmp_path, capsys, argv, option):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("argv, key", [
    (["train", "--output-dir", "{tmp}/run", "--learning-rate", "nan"], "learning_rate"),
    (["train", "--output-dir", "{tmp}/run", "--set", "max_grad_norm=.inf"], "max_grad_norm"),
    (["train", "--output-dir", "{tmp}/run", "--weight-decay", "-1"], "weight_decay"),
    (["train-vae", "m.jsonl", "--output-dir", "{tmp}/run", "--kl-weight", "inf"], "kl_weight"),
])
def test_training_config_rejects_non_finite_and_negative(tmp_path, capsys, argv, key):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
