"""Feature extractors: real classes with random weights, and their real weight-loading paths from local files."""

from __future__ import annotations

import math

import pytest
import torch

from chexgen.data.labels import LABELS
from chexgen.errors import ChexgenError
from chexgen.evaluation.features import (
    ClassifierExtractor,
    InceptionV3Extractor,
    OpenClipExtractor,
    XRVDenseNetExtractor,
    build_extractor,
    extract_features,
    write_random_inception_weights,
)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, 96, 80, generator=g)  # one image: full-size CPU forwards are the cost here


def test_xrv_weights_by_name_from_cache_and_local_files(images, tmp_path):
    import os

    import torchxrayvision as xrv

    torch.manual_seed(0)
    rand = XRVDenseNetExtractor.from_weights(random_init=True)
    # a weights *name* resolves to TorchXRayVision's cache file; pre-placing that file (as on an offline
    # machine) runs the library's real loading code: labels, operating thresholds, input resolution
    name = "densenet121-res224-all"
    cache = tmp_path / "xrv_cache"
    cache.mkdir()
    torch.save(rand.model, cache / os.path.basename(xrv.models.model_urls[name]["weights_url"]))
    ex = XRVDenseNetExtractor.from_weights(name, cache_dir=str(cache))
    assert ex.pathologies == xrv.models.model_urls[name]["labels"] and ex.model.op_threshs is not None

    x = ex.preprocess(images)
    assert x.shape == (1, 1, 224, 224)
    assert x.min() >= -1024 and x.max() <= 1024 and x.max() > 500  # TorchXRayVision's intensity range
    out = ex(images)
    assert out.features.shape == (1, 1024) and torch.isfinite(out.features).all()
    assert out.scores.shape == (1, len(LABELS))
    # 'No Finding', 'Pleural Other', 'Support Devices' are not among TorchXRayVision's outputs
    nan_cols = {LABELS[j] for j in range(len(LABELS)) if math.isnan(out.scores[0, j])}
    assert nan_cols == {"No Finding", "Pleural Other", "Support Devices"}
    finite = out.scores[~torch.isnan(out.scores)]
    assert (finite >= 0).all() and (finite <= 1).all()  # op_norm-calibrated probabilities

    # a local file (a whole pickled model, as TorchXRayVision stores its weights) loads the same parameters
    # (compared by parameters: a second full forward pass on CPU costs seconds and checks nothing more)
    path = tmp_path / "xrv.pt"
    torch.save(rand.model, path)
    ref = rand.model.state_dict()
    again = XRVDenseNetExtractor.from_weights(str(path))
    assert again.pathologies == rand.pathologies
    assert all(torch.equal(v, ref[k]) for k, v in again.model.state_dict().items())
    # ... and so does a plain state dict
    torch.save(rand.model.state_dict(), tmp_path / "xrv_sd.pt")
    sd = XRVDenseNetExtractor.from_weights(str(tmp_path / "xrv_sd.pt"))
    assert all(torch.equal(v, ref[k]) for k, v in sd.model.state_dict().items())

    with pytest.raises(ChexgenError, match="densenet121-res224-all"):
        XRVDenseNetExtractor.from_weights("densenet121-res224-nonexistent")
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        ex(images * 255)


def test_open_clip_random_and_local_checkpoint(images, tmp_path):
    torch.manual_seed(0)
    ex = OpenClipExtractor.from_weights("ViT-S-32", random_init=True)
    out = ex(images)
    assert out.features.shape == (1, ex.dim) and ex.dim == 384
    assert out.scores is None
    x = ex.preprocess(images)
    assert x.shape == (1, 3, ex.input_size, ex.input_size)
    ckpt = tmp_path / "clip.pt"
    torch.save({"state_dict": ex.model.state_dict()}, ckpt)
    again = OpenClipExtractor.from_weights(f"ViT-S-32:{ckpt}")
    assert torch.allclose(again(images).features, out.features, atol=1e-5)
    with pytest.raises(ChexgenError, match="MODEL:PRETRAINED"):
        OpenClipExtractor.from_weights("ViT-S-32")
    with pytest.raises(ChexgenError, match="unknown open_clip model"):
        OpenClipExtractor.from_weights("no-such-model:openai")


def test_inception_from_local_weights(images, tmp_path):
    path = write_random_inception_weights(tmp_path / "inception.pth", seed=1)
    ex = InceptionV3Extractor(str(path))
    x = ex.preprocess(images)
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 299, 299)
    out = ex(images)
    assert out.features.shape == (1, 2048) and torch.isfinite(out.features).all()
    # the loader really reads the file: a second load has exactly the saved parameters
    saved = torch.load(path)
    assert all(torch.equal(v, saved[k]) for k, v in InceptionV3Extractor(str(path)).model.state_dict().items())
    with pytest.raises(ChexgenError, match="not found"):
        InceptionV3Extractor(str(tmp_path / "missing.pth"))


class _TinyClassifier(torch.nn.Module):
    def __init__(self, n_classes: int = 14):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, stride=2)
        self.head = torch.nn.Linear(8, n_classes)

    def forward(self, x):
        f = self.conv(x).relu().mean((2, 3))
        return {"features": f, "scores": self.head(f).sigmoid()}


def test_classifier_extractor_output_forms_and_batching():
    torch.manual_seed(0)
    model = _TinyClassifier()
    ex = ClassifierExtractor(model, input_size=64)
    imgs = torch.rand(5, 1, 70, 64)
    out = ex(imgs)
    assert out.features.shape == (5, 8) and out.scores.shape == (5, 14)
    # tuple output, custom class names mapped onto the 14 labels (unknown names dropped)
    two = ClassifierExtractor(lambda x: (x.mean((1, 2, 3))[:, None].repeat(1, 3), torch.ones(x.shape[0], 2)),
                              input_size=32, class_names=["effusion", "not-a-label"])
    o2 = two(imgs)
    assert o2.features.shape == (5, 3)
    assert o2.scores[0, LABELS.index("Pleural Effusion")] == 1 and torch.isnan(o2.scores).sum() == 5 * 13
    # extract_features: batching over an iterable of arrays gives the same numbers as one call
    fs = extract_features(ex, [im[0].numpy() for im in imgs], batch_size=2)
    assert fs.features.shape == (5, 8)
    assert torch.allclose(torch.from_numpy(fs.features).float(), out.features, atol=1e-6)
    with pytest.raises(ChexgenError, match="unknown feature extractor"):
        build_extractor("resnet")
