"""Text encoders: padding mask, truncation warning, T5 by local path, MiniLM offline."""

from __future__ import annotations

import logging

import pytest
import torch

from chexgen.errors import ChexgenError
from chexgen.models.presets import TextEncoderSpec
from chexgen.models.text_encoder import clean_prompt, load_text_encoder


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextEncoderSpec(kind="minilm", max_length=16, embed_dim=384))


def test_minilm_shapes_and_padding_mask(minilm):
    out = minilm.encode(["no acute findings", "small right pleural effusion with basilar atelectasis"])
    assert out.embeddings.shape == (2, 16, 384) and out.embeddings.dtype == torch.float32
    assert out.mask.shape == (2, 16)
    n_short = int(out.mask[0].sum())
    n_long = int(out.mask[1].sum())
    assert 3 < n_short < n_long <= 16
    assert out.mask[0, :n_short].all() and not out.mask[0, n_short:].any()  # right padding
    assert not any(p.requires_grad for p in minilm.parameters()) and not minilm.model.training


def test_real_tokens_do_not_depend_on_padding_length(minilm):
    """Same prompt alone or next to a long one gives the same real-token embeddings (mask respected)."""
    a = minilm.encode(["mild cardiomegaly"])
    b = minilm.encode(["mild cardiomegaly", "a much longer prompt about the lungs and the heart and pleura"])
    n = int(a.mask[0].sum())
    assert torch.allclose(a.embeddings[0, :n], b.embeddings[0, :n], atol=1e-5)


def test_truncation_warns_once_with_count(minilm, caplog):
    with caplog.at_level(logging.WARNING, logger="chexgen.models.text_encoder"):
        out = minilm.encode(["effusion " * 40, "normal", "opacity " * 30])
    assert out.mask[0].sum() == 16 and out.mask[2].sum() == 16
    msgs = [r.getMessage() for r in caplog.records if r.name == "chexgen.models.text_encoder"]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 3 prompt(s)")


def test_t5_loads_by_local_path(tiny_t5_dir):
    te = load_text_encoder(TextEncoderSpec(kind="t5", name_or_path=str(tiny_t5_dir), max_length=12, embed_dim=32))
    assert type(te.model).__name__ == "T5EncoderModel"
    out = te.encode(["left lower lobe consolidation", "normal"])
    assert out.embeddings.shape == (2, 12, 32) and out.mask.dtype == torch.long
    assert out.mask[1].sum() < out.mask[0].sum()


def test_wrong_embed_dim_and_missing_folder_are_clear(tiny_t5_dir, tmp_path):
    with pytest.raises(ChexgenError, match="embed_dim"):
        load_text_encoder(TextEncoderSpec(kind="t5", name_or_path=str(tiny_t5_dir), max_length=12, embed_dim=4096))
    with pytest.raises(ChexgenError, match="does not exist"):
        load_text_encoder(TextEncoderSpec(kind="t5", name_or_path=str(tmp_path / "missing"), embed_dim=32))
    with pytest.raises(ChexgenError, match="kind"):
        load_text_encoder(TextEncoderSpec(kind="clip"))


def test_clean_prompt_modes():
    assert clean_prompt("  Small  [left]\n Effusion ", "basic") == "Small [left] Effusion"
    assert clean_prompt("  Small  [left]\n Effusion ", "lower") == "small  [left]\n effusion"
    assert clean_prompt(" x ", "none") == " x "
    with pytest.raises(ChexgenError):
        clean_prompt("x", "shout")
