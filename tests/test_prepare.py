"""chexgen prepare: cached features equal direct encoding; rejects, resume and multi-writer sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_data import make_dataset, one_torch_thread, save_tiny_vae  # noqa: F401 (autouse fixture)

from chexgen.cli import main
from chexgen.data.imageio import fit_square, load_gray
from chexgen.data.manifest import read_manifest
from chexgen.models.presets import get_preset
from chexgen.models.text_encoder import load_text_encoder
from chexgen.models.vae import RadiographVAE
from chexgen.training.cache import (
    CachedFeatures,
    CacheSpec,
    collate_features,
    finalize_cache,
    prepare_cache,
    read_index,
)

RES = 32


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    vae_dir = save_tiny_vae(tmp_path_factory.mktemp("vae") / "vae")
    vae = RadiographVAE.from_pretrained(vae_dir).eval()
    text = load_text_encoder(get_preset("tiny").text_encoder)
    return vae_dir, vae, text


def _spec(vae, text, **kw) -> CacheSpec:
    return CacheSpec(resolution=RES, vae={"kind": "gray", "name_or_path": "x"}, vae_scaling_factor=vae.scaling_factor,
                     text_encoder=text.spec.to_dict(), latent_shape=[4, RES // 8, RES // 8],
                     embed_dim=text.embed_dim, max_length=text.max_length, **kw)


def test_cli_caches_features_and_lists_corrupt_image(tmp_path, encoders):
    vae_dir, vae, text = encoders
    manifest = make_dataset(tmp_path / "data", n=5, size=40, corrupt=1)
    out = tmp_path / "cache"
    rc = main(["prepare", str(manifest), "--out", str(out), "--vae", str(vae_dir), "--resolution", str(RES),
               "--num-workers", "0", "--shard-size", "2", "--no-progress"])
    assert rc == 1  # finished, but something was rejected
    index = read_index(out)
    assert index["num_records"] == 5 and index["num_rejects"] == 1
    assert [sh["count"] for sh in index["shards"]] == [2, 2, 1]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["bad0"] and "cannot read image" in rejects[0]["reason"]

    # cached values equal a direct encoding (to float16 precision), text stored without padding
    ds = CachedFeatures(out)
    records = {r.id: r for r in read_manifest(manifest)}
    assert sorted(ds.ids) == [f"r{i}" for i in range(5)]
    k = ds.ids.index("r3")
    rec = records["r3"]
    img = torch.from_numpy(fit_square(load_gray(manifest.parent / rec.image), RES, "crop"))[None, None]
    mean, std = vae.encode_moments(img)
    emb = text.encode([rec.impression])
    n_tokens = int(emb.mask.sum())
    item = ds[k]
    assert item["text"].shape == (n_tokens, 384) and item["text"].dtype == torch.float16
    torch.testing.assert_close(item["text"].float(), emb.embeddings[0, :n_tokens], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(item["latent_mean"].float(), mean[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(item["latent_std"].float(), std[0], atol=2e-3, rtol=2e-3)

    batch = collate_features([ds[0], ds[1]], pad_to=120)
    assert batch["text"].shape == (2, 120, 384)
    assert batch["text_mask"].sum(1).tolist() == [ds[0]["text"].shape[0], ds[1]["text"].shape[0]]
    # memory-mapped reading gives the same items as the preloaded cache
    lazy = CachedFeatures(out, preload=False)
    for key in ("latent_mean", "latent_std", "text"):
        assert torch.equal(lazy[k][key], item[key])


class _Interrupting:
    """Wraps a VAE and raises KeyboardInterrupt on the n-th encode call (a killed job)."""

    def __init__(self, vae, fail_at: int) -> None:
        self.vae, self.fail_at, self.calls = vae, fail_at, 0

    def encode_moments(self, images):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.vae.encode_moments(images)


def test_interrupted_job_resumes_without_duplicates(tmp_path, encoders):
    _, vae, text = encoders
    manifest = make_dataset(tmp_path / "data", n=7, size=32, corrupt=1)
    records = read_manifest(manifest)
    out = tmp_path / "cache"
    spec = _spec(vae, text)
    kw = dict(manifest_root=manifest.parent, shard_size=2, batch_size=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(records, out, _Interrupting(vae, fail_at=3), text, spec, **kw)
    first = sorted(out.glob("part000-*.safetensors"))
    assert len(first) == 2 and not (out / "index.json").exists()
    stamps = [p.stat().st_mtime_ns for p in first]

    summary = prepare_cache(records, out, vae, text, spec, **kw)
    assert summary.skipped_done == 4  # two finished shards
    assert [p.stat().st_mtime_ns for p in first] == stamps  # finished shards were not redone
    ds = CachedFeatures(out)
    assert sorted(ds.ids) == [f"r{i}" for i in range(7)]
    assert read_index(out)["num_rejects"] == 1

    again = prepare_cache(records, out, vae, text, spec, **kw)  # a third run has nothing left to do
    assert again.written == 0 and again.rejected == 0 and again.skipped_done == 8

    with pytest.raises(Exception, match="different settings"):
        prepare_cache(records, out, vae, text, _spec(vae, text, resize_policy="pad"), **kw)


def test_two_writers_share_the_work_and_merge(tmp_path, encoders):
    _, vae, text = encoders
    manifest = make_dataset(tmp_path / "data", n=6, size=32, corrupt=1)
    records = read_manifest(manifest)
    out = tmp_path / "cache"
    spec = _spec(vae, text)
    kw = dict(manifest_root=manifest.parent, num_shards=2, shard_size=8, batch_size=4, progress=False)
    s0 = prepare_cache(records, out, vae, text, spec, shard_index=0, **kw)
    assert not s0.index_written and not (out / "index.json").exists()
    with pytest.raises(Exception, match="have not finished"):
        finalize_cache(out)
    s1 = prepare_cache(records, out, vae, text, spec, shard_index=1, **kw)
    assert s1.index_written
    assert s0.written + s1.written == 6 and s0.rejected + s1.rejected == 1
    ds = CachedFeatures(out)
    assert sorted(ds.ids) == [f"r{i}" for i in range(6)]
    assert len(set(ds.ids)) == len(ds.ids)


def test_condition_latents_are_cached_per_record(tmp_path, encoders):
    _, vae, text = encoders
    manifest = make_dataset(tmp_path / "data", n=3, size=32)
    records = read_manifest(manifest)

    def square_in_first(record, root, size, policy):
        if record.id != "r0":
            return None
        img = np.zeros((size, size), np.float32)
        img[8:24, 8:24] = 1.0
        return img

    spec = _spec(vae, text, conditions=["control"])
    prepare_cache(records, tmp_path / "cache", vae, text, spec, manifest_root=manifest.parent,
                  conditions={"control": square_in_first}, progress=False)
    ds = CachedFeatures(tmp_path / "cache")
    present = {ds.ids[i]: int(ds[i]["cond_present.control"]) for i in range(len(ds))}
    assert present == {"r0": 1, "r1": 0, "r2": 0}
    cond = ds[ds.ids.index("r0")]["cond.control"].float()
    img = torch.zeros(1, 1, RES, RES)
    img[..., 8:24, 8:24] = 1.0
    torch.testing.assert_close(cond, vae.encode_moments(img)[0][0], atol=2e-3, rtol=2e-3)


def test_cli_condition_options_are_recorded_and_checked_on_resume(tmp_path, encoders, capsys):
    vae_dir, _, _ = encoders
    manifest = make_dataset(tmp_path / "data", n=3, size=32)
    out = tmp_path / "cache"
    base = ["prepare", str(manifest), "--out", str(out), "--vae", str(vae_dir), "--resolution", str(RES),
            "--num-workers", "0", "--no-progress", "--conditions"]
    assert main(base + ["--condition-kinds", "finding", "--condition-style", "alternate"]) == 0
    spec = read_index(out)["spec"]
    assert spec["conditions"] == ["control"]
    assert spec["condition_options"] == {"kinds": ["finding"], "style": "alternate"}
    assert main(base + ["--condition-style", "boxes"]) == 2  # another drawing on resume: refused, named
    assert "condition_options" in capsys.readouterr().err
    # the default drawing leaves the options empty (caches written before the field existed still match)
    assert main(base[:3] + [str(tmp_path / "cache2")] + base[4:]) == 0
    assert read_index(tmp_path / "cache2")["spec"]["condition_options"] == {}


def test_bad_manifest_rows_are_rejects_not_aborts(tmp_path, encoders, capsys):
    """A malformed line, a duplicate id and a zero-area box are listed with file / line; the rest is cached."""
    vae_dir, _, _ = encoders
    manifest = make_dataset(tmp_path / "data", n=3, size=32)
    lines = manifest.read_text().splitlines()
    lines.insert(1, '{"id": "broken", "image": ')  # line 2: cut JSON
    lines.append(lines[0])  # line 5: duplicate id r0
    lines.append(json.dumps({"id": "flat", "image": "images/img0.png", "impression": "x",
                             "boxes": [{"label": "Nodule", "x0": 5, "y0": 5, "x1": 5, "y1": 9}]}))  # line 6
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cache"
    rc = main(["prepare", str(manifest), "--out", str(out), "--vae", str(vae_dir), "--resolution", str(RES),
               "--num-workers", "0", "--no-progress"])
    assert rc == 1
    assert read_index(out)["num_records"] == 3
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["id"]) for r in rejects] == [
        (str(manifest), 2, None), (str(manifest), 5, "r0"), (str(manifest), 6, "flat")]
    assert "not valid JSON" in rejects[0]["reason"] and "duplicate id" in rejects[1]["reason"]
    assert "x0 < x1" in rejects[2]["reason"]
    assert "rejected: 3 records" in capsys.readouterr().out
    # a rerun has nothing new to do and still reports the rejects (exit 1), without listing them twice
    assert main(["prepare", str(manifest), "--out", str(out), "--vae", str(vae_dir), "--resolution", str(RES),
                 "--num-workers", "0", "--no-progress"]) == 1
    assert len((out / "rejects.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("content, message", [
    (b"", "holds no records"),
    (b'{"id": "a", "impression": "caf\xe9"}\n', "not UTF-8 text (byte 0xe9"),
    (b"not json at all\n", "no usable record"),
])
def test_unusable_manifest_exits_2_with_one_line(tmp_path, encoders, capsys, content, message):
    vae_dir, _, _ = encoders
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(content)
    out = tmp_path / "cache"
    rc = main(["prepare", str(manifest), "--out", str(out), "--vae", str(vae_dir), "--resolution", str(RES),
               "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(manifest) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_data_root_refuses_paths_outside_it(tmp_path, encoders):
    vae_dir, _, _ = encoders
    manifest = make_dataset(tmp_path / "data", n=2, size=32)
    secret = tmp_path / "secret.png"
    secret.write_bytes((tmp_path / "data" / "images" / "img0.png").read_bytes())
    (tmp_path / "data" / "images" / "link.png").symlink_to(secret)
    lines = manifest.read_text().splitlines()
    lines.append(json.dumps({"id": "dotdot", "image": "../secret.png", "impression": "x"}))
    lines.append(json.dumps({"id": "link", "image": "images/link.png", "impression": "x"}))
    manifest.write_text("\n".join(lines) + "\n")
    base = ["prepare", str(manifest), "--vae", str(vae_dir), "--resolution", str(RES), "--num-workers", "0",
            "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "open")]) == 0  # without --data-root: allowed, as before
    assert read_index(tmp_path / "open")["num_records"] == 4
    assert main(base + ["--out", str(tmp_path / "cache"), "--data-root", str(tmp_path / "data")]) == 1
    rejects = [json.loads(x) for x in (tmp_path / "cache" / "rejects.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejects] == ["dotdot", "link"]
    assert all("outside the data root" in r["reason"] for r in rejects)
    assert sorted(CachedFeatures(tmp_path / "cache").ids) == ["r0", "r1"]
