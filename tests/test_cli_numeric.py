"""Numeric options: nan / inf / negative values stop at parse time with a one-line argparse error."""

from __future__ import annotations

import argparse

import pytest

from chexgen.cli import main
from chexgen.commands._types import finite_float, nonneg_float, nonneg_int, positive_float, positive_int


@pytest.mark.parametrize("fn, text", [
    (finite_float, "nan"), (finite_float, "inf"), (finite_float, "-inf"), (finite_float, "x"),
    (nonneg_float, "-0.5"), (positive_float, "0"), (positive_int, "0"), (positive_int, "2.5"),
    (nonneg_int, "-1"),
])
def test_type_functions_reject(fn, text):
    with pytest.raises(argparse.ArgumentTypeError):
        fn(text)


def test_type_functions_accept():
    assert finite_float("-1.5") == -1.5 and nonneg_float("0") == 0.0 and positive_float("1e-4") == 1e-4
    assert positive_int("3") == 3 and nonneg_int("0") == 0


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
