"""chexgen train-vae: SSIM term, reconstruction improves, rejects listed, exported VAE with data-derived scale."""

from __future__ import annotations

import json

import pytest
import torch
from _train_data import make_dataset, one_torch_thread, save_tiny_vae  # noqa: F401 (autouse fixture)

from chexgen.cli import main
from chexgen.models.vae import RadiographVAE
from chexgen.training.vae_task import latent_std, load_images, ssim


def test_ssim_loss_term_matches_scikit_image_and_is_differentiable():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 32, 32, generator=g)
    y = (x + 0.1 * torch.randn(2, 1, 32, 32, generator=g)).clamp(0, 1).requires_grad_(True)
    value = ssim(x, y)
    ref = sum(structural_similarity(x[i, 0].double().numpy(), y[i, 0].detach().double().numpy(), data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
              for i in range(2)) / 2
    assert float(value.detach()) == pytest.approx(ref, abs=2e-3)
    value.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert float(ssim(x, x)) > 0.9999


def test_train_vae_improves_reconstruction_and_exports_scaled_vae(tmp_path):
    manifest = make_dataset(tmp_path / "data", n=8, size=32, corrupt=1)
    start = save_tiny_vae(tmp_path / "start")
    out = tmp_path / "run"

    def recon_l1(vae: RadiographVAE, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((vae(x) - x).abs().mean())

    from chexgen.data.manifest import read_manifest

    data = load_images(read_manifest(manifest), manifest.parent, 32, "crop", tmp_path / "rejects.jsonl", progress=False)
    x = data.images.float()
    before = recon_l1(RadiographVAE.from_pretrained(start), x)
    rc = main(["train-vae", str(manifest), "--output-dir", str(out), "--init-from", str(start), "--resolution", "32",
               "--max-steps", "25", "--batch-size", "8", "--learning-rate", "2e-3", "--ema-decay", "0",
               "--no-progress", "--log-every", "5"])
    assert rc == 1  # trained, but one image was rejected
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["file"], r["line"]) for r in rejects] == [("bad0", str(manifest), 9)]
    vae = RadiographVAE.from_pretrained(out / "vae")
    assert recon_l1(vae, x) < 0.8 * before
    expected = 1.0 / latent_std(vae.autoencoder, data.images)
    assert abs(vae.scaling_factor - expected) < 1e-4 * expected
    assert (out / "samples").is_dir() and (out / "checkpoints").is_dir()


def test_train_vae_decoder_only_keeps_the_latent_space(tmp_path, capsys):
    manifest = make_dataset(tmp_path / "data", n=8, size=32)
    start = save_tiny_vae(tmp_path / "start")
    init = RadiographVAE.from_pretrained(start)
    out = tmp_path / "run"
    from chexgen.data.manifest import read_manifest

    x = load_images(read_manifest(manifest), manifest.parent, 32, "crop", tmp_path / "rejects.jsonl",
                    progress=False).images.float()
    with torch.no_grad():
        before = float((init(x) - x).abs().mean())
    rc = main(["train-vae", str(manifest), "--output-dir", str(out), "--init-from", str(start), "--resolution", "32",
               "--decoder-only", "--max-steps", "25", "--batch-size", "8", "--learning-rate", "2e-3",
               "--ema-decay", "0", "--no-progress"])
    assert rc == 0
    tuned = RadiographVAE.from_pretrained(out / "vae")
    a, b = init.autoencoder.state_dict(), tuned.autoencoder.state_dict()
    for name in a:
        same = torch.equal(a[name], b[name])
        assert same == name.startswith(("encoder.", "quant_conv.")), name
    assert tuned.scaling_factor == init.scaling_factor  # not re-estimated: the latents are the init's
    with torch.no_grad():
        assert torch.equal(tuned.encode(x), init.encode(x))
        assert float((tuned(x) - x).abs().mean()) < before

    # decoder-only needs a VAE to start from: one line, nothing trained
    assert main(["train-vae", str(manifest), "--output-dir", str(tmp_path / "no-init"), "--decoder-only",
                 "--max-steps", "1", "--no-progress"]) == 2
    assert "init_from" in capsys.readouterr().err
    assert not (tmp_path / "no-init" / "vae").exists()


def test_train_vae_bad_manifest_lines_are_rejects_and_bad_encoding_stops(tmp_path, capsys):
    manifest = make_dataset(tmp_path / "data", n=4, size=32)
    lines = manifest.read_text().splitlines()
    lines.insert(2, "{oops")
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["--output-dir", str(out), "--resolution", "32", "--max-steps", "1", "--batch-size", "2",
            "--no-progress", "--checkpoint-every", "0", "--scaling-samples", "4"]
    assert main(["train-vae", str(manifest)] + args) == 1
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["id"]) for r in rejects] == [(3, None)] and "not valid JSON" in rejects[0]["reason"]
    assert "rejected: 1 records" in capsys.readouterr().out

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "a", "image": "x.png", "impression": "\xe9panchement"}\n')
    assert main(["train-vae", str(latin), "--output-dir", str(tmp_path / "run2")] + args[2:]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and str(latin) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run2").exists()
