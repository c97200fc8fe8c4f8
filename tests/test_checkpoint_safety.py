"""Checkpoints: nothing in a run folder can run code on resume; old plain-data checkpoints still load."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from chexgen.errors import ChexgenError
from chexgen.training.checkpoint import TrainerState, capture_rng_state, load_checkpoint, save_checkpoint
from chexgen.training.config import TrainConfig


class _Proof:
    """Unpickling this creates a file: what a hostile scheduler.pt / rng-rank00.pt in a shared run folder does."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _objects(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    return model, opt, sched


def _save(tmp_path, steps: int = 3):
    model, opt, sched = _objects()
    for _ in range(steps):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    path = save_checkpoint(tmp_path, TrainerState(step=steps), model, None, opt, sched, TrainConfig())
    return path, model, opt, sched


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_new_format_holds_no_pickles_and_restores_exactly(tmp_path):
    path, model, opt, sched = _save(tmp_path)
    expected = _draws()  # what the RNGs give right after the checkpoint
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.yaml", "model.safetensors", "optimizer.pt", "rng-rank00.safetensors",
                     "scheduler.json", "trainer_state.json"]
    m2, o2, s2 = _objects(seed=99)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    state = load_checkpoint(path, m2, None, o2, s2)
    assert state.step == 3
    assert _draws() == expected
    assert s2.state_dict() == sched.state_dict() and s2.get_last_lr() == sched.get_last_lr()
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(o2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def _make_old_format(path, sched):
    """Rewrite a checkpoint the way chexgen wrote them before (scheduler.pt, rng-rankKK.pt via torch.save)."""
    (path / "scheduler.json").unlink()
    (path / "rng-rank00.safetensors").unlink()
    torch.save(sched.state_dict(), path / "scheduler.pt")
    random.seed(11), np.random.seed(12), torch.manual_seed(13)
    torch.save(capture_rng_state(), path / "rng-rank00.pt")


def test_old_plain_data_checkpoints_still_load(tmp_path):
    path, _, _, sched = _save(tmp_path)
    _make_old_format(path, sched)
    expected = _draws()
    m2, o2, s2 = _objects(seed=5)
    load_checkpoint(path, m2, None, o2, s2)
    assert _draws() == expected and s2.state_dict() == sched.state_dict()


@pytest.mark.parametrize("victim", ["scheduler.pt", "rng-rank00.pt", "optimizer.pt"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, victim):
    path, _, _, sched = _save(tmp_path / "run")
    _make_old_format(path, sched)
    proof = tmp_path / "proof"
    torch.save({"state": _Proof(str(proof))}, path / victim)
    m2, o2, s2 = _objects(seed=5)
    before = [p.clone() for p in m2.parameters()]
    with pytest.raises(ChexgenError, match="refusing to load") as err:
        load_checkpoint(path, m2, None, o2, s2)
    assert str(path / victim) in str(err.value)
    assert not proof.exists()
    assert all(torch.equal(a, b) for a, b in zip(before, m2.parameters()))  # nothing was half-restored
