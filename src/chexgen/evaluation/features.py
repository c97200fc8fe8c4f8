"""Feature extractors behind one interface.

Every extractor takes gray images as a float tensor ``[B, 1, H, W]`` in
``[0, 1]`` (bright = dense, as :func:`chexgen.data.imageio.load_gray` returns
them), applies *its own* preprocessing and returns an :class:`ExtractorOutput`:
``features`` ``[B, D]`` and, when the model is a CXR classifier, ``scores``
``[B, 14]`` in :data:`chexgen.data.labels.LABELS` order (NaN for classes it
does not predict).

Extractors (``build_extractor(kind, weights)``):

* ``xrv``: TorchXRayVision DenseNet121, 1024-d pooled features plus its
  pathology outputs mapped to the 14 labels. Preprocessing as the library's
  models were trained: gray, centre crop to a square, 224 px, intensities
  scaled to [-1024, 1024]. ``weights`` is a TorchXRayVision weights name
  (``densenet121-res224-all`` default; others ``-nih -pc -chex -rsna -mimic_nb
  -mimic_ch``) which the library fetches from GitHub into
  ``~/.torchxrayvision/models_data/`` (copy the file there on offline
  machines), or a local file (the pickled model the library saves, or a
  state dict).
* ``clip``: an open_clip image tower. ``weights`` is ``MODEL:PRETRAINED``, e.g.
  ``ViT-L-14:openai`` (768-d, as in the paper), where PRETRAINED is an
  open_clip tag (downloaded from the hub) or a local checkpoint path.
  Gray is replicated to RGB, resized / centre-cropped to the model's size and
  normalised with the model's mean / std.
* ``inception``: the TF-ported Inception-v3 used for FID, via torch-fidelity
  (what torchmetrics' FID wraps). 2048-d pool features; input is RGB uint8,
  resized to 299 inside the model. ``weights`` is the local ``.pth`` path
  (``weights-inception-2015-12-05-6726825d.pth`` from torch-fidelity's
  release); without it torch-fidelity downloads that file.
* any chexgen classifier: :class:`ClassifierExtractor` wraps a callable
  ``f(x: [B,1,H,W] in [0,1]) ->`` features, or ``(features, scores)``, or a
  dict with ``"features"`` and / or ``"scores"`` (``"logits"`` accepted).
  This is the interface :mod:`chexgen.downstream` classifiers plug into.
* ``rad-dino`` / ``dinov2``: RAD-DINO (``microsoft/rad-dino``) and DINOv2 (``facebook/dinov2-base`` or
  any size) through transformers, with their own image processors; ``weights`` is a hub id or a
  local folder (:mod:`chexgen.evaluation.dino`).

Offline tests build the same classes with random weights
(``random_init=True``); the weight-loading paths above are the real ones.
"""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from chexgen.data.labels import LABELS, normalize_label_name
from chexgen.errors import ChexgenError

log = logging.getLogger(__name__)

__all__ = [
    "ExtractorOutput",
    "FeatureSet",
    "FeatureExtractor",
    "XRVDenseNetExtractor",
    "OpenClipExtractor",
    "InceptionV3Extractor",
    "ClassifierExtractor",
    "EXTRACTOR_KINDS",
    "build_extractor",
    "extract_features",
    "write_random_inception_weights",
]

EXTRACTOR_KINDS = ("xrv", "clip", "inception", "rad-dino", "dinov2")
DEFAULT_XRV_WEIGHTS = "densenet121-res224-all"
DEFAULT_CLIP_WEIGHTS = "ViT-L-14:openai"


@dataclass
class ExtractorOutput:
    features: torch.Tensor  # [B, D] float32
    scores: torch.Tensor | None = None  # [B, 14] in LABELS order, NaN where not predicted


@dataclass
class FeatureSet:
    """Features (and classifier scores) of a whole image set, as numpy arrays."""

    features: np.ndarray  # [N, D]
    scores: np.ndarray | None = None  # [N, 14]


def _center_crop_square(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def _resize(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected gray images [B,1,H,W] in [0,1], got shape {tuple(images.shape)}")
    images = images.float()
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"expected intensities in [0,1], got [{lo:.3g}, {hi:.3g}] (load with chexgen load_gray)")
    return images


def map_scores_to_labels(scores: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
    """Reorder classifier outputs named ``names`` into the 14 LABELS columns (NaN where absent)."""
    out = torch.full((scores.shape[0], len(LABELS)), float("nan"), dtype=torch.float32)
    aliases = {"effusion": "Pleural Effusion", "pleuraleffusion": "Pleural Effusion"}
    for j, name in enumerate(names):
        key = str(name).lower().replace(" ", "").replace("_", "").replace("-", "")
        canon = aliases.get(key)
        if canon is None:
            try:
                canon = normalize_label_name(name)
            except KeyError:
                continue
        out[:, LABELS.index(canon)] = scores[:, j].float().cpu()
    return out


class FeatureExtractor(abc.ABC):
    """One feature model plus its preprocessing. Call it on [B,1,H,W] images in [0,1]."""

    name: str = "extractor"
    dim: int = 0
    input_size: int = 224  # the square size images are best loaded at (see fit_square)
    supports_reduced_precision: bool = True  # False: the network needs fp32 (or integer) input

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.dtype = torch.float32

    def networks(self) -> list[torch.nn.Module]:
        """The torch modules whose dtype :meth:`set_precision` changes."""
        model = getattr(self, "model", None)
        return [model] if isinstance(model, torch.nn.Module) else []

    def set_precision(self, precision: "str | torch.dtype" = "fp32") -> "FeatureExtractor":
        """Compute in ``precision`` (``auto | fp32 | bf16 | fp16``, see :mod:`chexgen.models.precision`).

        Features and scores are returned in fp32 whatever the precision. Extractors that need fp32
        (``supports_reduced_precision`` False) stay in fp32, with a note.
        """
        from chexgen.models.precision import precision_name, resolve_precision

        dtype = resolve_precision(precision, self.device)
        if dtype != torch.float32 and not self.supports_reduced_precision:
            log.info("%s features: %s is not supported by this extractor; computing in fp32",
                     self.name, precision_name(dtype))
            dtype = torch.float32
        for module in self.networks():
            module.to(dtype=dtype)
        self.dtype = dtype
        return self

    @abc.abstractmethod
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,1,H,W] in [0,1] -> the model's input tensor."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> ExtractorOutput:
        """Model input -> features (and scores)."""

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> ExtractorOutput:
        x = self.preprocess(_check_images(images)).to(self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        out = self.forward(x)
        return ExtractorOutput(
            features=out.features.detach().float().cpu(),
            scores=None if out.scores is None else out.scores.detach().float().cpu(),
        )

    def describe(self) -> dict:
        from chexgen.models.precision import precision_name

        return {"name": self.name, "dim": self.dim, "input_size": self.input_size,
                "precision": precision_name(self.dtype)}


# --------------------------------------------------------------------------- xrv
class XRVDenseNetExtractor(FeatureExtractor):
    """TorchXRayVision DenseNet121: 1024-d features + pathology scores (see module doc for weights)."""

    name = "xrv"
    dim = 1024
    input_size = 224

    def __init__(self, model: torch.nn.Module, weights: str | None = None, device: str | torch.device = "cpu"):
        super().__init__(device)
        self.model = model.to(self.device).eval()
        self.weights = weights
        import torchxrayvision as xrv

        self.pathologies = list(getattr(model, "pathologies", None) or xrv.datasets.default_pathologies)

    @classmethod
    def from_weights(
        cls,
        weights: str | None = DEFAULT_XRV_WEIGHTS,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        random_init: bool = False,
    ) -> "XRVDenseNetExtractor":
        import torchxrayvision as xrv

        if random_init:
            return cls(xrv.models.DenseNet(weights=None), weights=None, device=device)
        weights = weights or DEFAULT_XRV_WEIGHTS
        if os.path.isfile(weights):
            return cls(_load_xrv_file(Path(weights)), weights=str(weights), device=device)
        if weights not in xrv.models.model_urls or not weights.startswith("densenet"):
            names = sorted(k for k in xrv.models.model_urls if k.startswith("densenet"))
            raise ChexgenError(f"--weights {weights!r}: not a file and not a TorchXRayVision DenseNet name {names}")
        try:
            model = xrv.models.DenseNet(weights=weights, cache_dir=cache_dir)
        except Exception as e:  # download failures come as many exception types
            where = cache_dir or os.path.join(os.path.expanduser("~"), ".torchxrayvision", "models_data")
            raise ChexgenError(
                f"could not load TorchXRayVision weights {weights!r} ({e}); offline, place the weights file in "
                f"{where} or pass its path with --weights"
            ) from None
        return cls(model, weights=weights, device=device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = _resize(_center_crop_square(images), self.input_size)
        return x * 2048.0 - 1024.0  # TorchXRayVision's [-1024, 1024] intensity range

    def forward(self, x: torch.Tensor) -> ExtractorOutput:
        feats = self.model.features2(x)
        logits = self.model.classifier(feats)
        if getattr(self.model, "op_threshs", None) is not None:
            import torchxrayvision as xrv

            probs = xrv.models.op_norm(torch.sigmoid(logits), self.model.op_threshs)
        else:
            probs = torch.sigmoid(logits)
        return ExtractorOutput(features=feats, scores=map_scores_to_labels(probs, self.pathologies))

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights or "random-init"}


def _load_xrv_file(path: Path) -> torch.nn.Module:
    import torchxrayvision as xrv

    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        state = obj.state_dict()
        pathologies = getattr(obj, "pathologies", None)
    elif isinstance(obj, dict):
        state = obj.get("state_dict", obj.get("model", obj))
        pathologies = obj.get("pathologies") if isinstance(obj.get("pathologies"), list) else None
    else:
        raise ChexgenError(f"{path}: expected a TorchXRayVision model or state dict, got {type(obj).__name__}")
    if "classifier.weight" not in state:
        raise ChexgenError(f"{path}: not a DenseNet state dict (no 'classifier.weight')")
    n_classes = state["classifier.weight"].shape[0]
    model = xrv.models.DenseNet(num_classes=n_classes)
    state = dict(state)
    if "op_threshs" in state:  # a registered buffer that is None in a fresh model
        model.op_threshs = state.pop("op_threshs")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ChexgenError(f"{path}: weights do not fit a TorchXRayVision DenseNet121: {e}") from None
    if pathologies is None and n_classes == len(xrv.datasets.default_pathologies):
        pathologies = list(xrv.datasets.default_pathologies)
    model.pathologies = pathologies or [f"class_{i}" for i in range(n_classes)]
    return model


# --------------------------------------------------------------------------- clip
class OpenClipExtractor(FeatureExtractor):
    """open_clip image encoder (features = the image embedding before normalisation)."""

    name = "clip"

    def __init__(self, model: torch.nn.Module, model_name: str, pretrained: str | None, device="cpu"):
        super().__init__(device)
        import open_clip

        self.model = model.to(self.device).eval()
        self.model_name, self.pretrained = model_name, pretrained
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = torch.tensor(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)
        self.dim = int(getattr(model.visual, "output_dim", 0) or 0)

    @classmethod
    def from_weights(
        cls, weights: str | None = DEFAULT_CLIP_WEIGHTS, device="cpu", random_init: bool = False
    ) -> "OpenClipExtractor":
        import open_clip

        spec = weights or DEFAULT_CLIP_WEIGHTS
        model_name, _, pretrained = spec.partition(":")
        if model_name not in open_clip.list_models():
            raise ChexgenError(f"--weights {spec!r}: unknown open_clip model {model_name!r} (see open_clip.list_models())")
        pretrained = None if random_init else (pretrained or None)
        if not random_init and pretrained is None:
            raise ChexgenError(f"--weights {spec!r}: give MODEL:PRETRAINED (an open_clip tag or a checkpoint path)")
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
        except Exception as e:
            raise ChexgenError(f"could not load open_clip {model_name} weights {pretrained!r}: {e}") from None
        return cls(model, model_name, pretrained, device=device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = _resize(_center_crop_square(images), self.input_size, mode="bicubic").clamp(0, 1)
        return (x.repeat(1, 3, 1, 1) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> ExtractorOutput:
        return ExtractorOutput(features=self.model.encode_image(x))

    def describe(self) -> dict:
        return {**super().describe(), "model": self.model_name, "pretrained": self.pretrained or "random-init"}


# ---------------------------------------------------------------------- inception
class InceptionV3Extractor(FeatureExtractor):
    """FID Inception-v3 (torch-fidelity), 2048-d pool features."""

    name = "inception"
    dim = 2048
    input_size = 299
    supports_reduced_precision = False  # uint8 input, cast to fp32 inside torch-fidelity

    def __init__(self, weights_path: str | None = None, device="cpu"):
        super().__init__(device)
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        if weights_path is not None and not os.path.isfile(weights_path):
            raise ChexgenError(f"--weights {weights_path}: Inception-v3 weights file not found")
        try:
            self.model = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=weights_path
            ).to(self.device)
        except (RuntimeError, OSError) as e:
            raise ChexgenError(f"could not load Inception-v3 FID weights ({weights_path or 'download'}): {e}") from None
        self.weights_path = weights_path

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = _resize(images, self.input_size)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> ExtractorOutput:
        (feats,) = self.model(x)
        return ExtractorOutput(features=feats)

    def describe(self) -> dict:
        return {**super().describe(), "weights": self.weights_path or "torch-fidelity download"}


def write_random_inception_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a randomly initialised FID Inception-v3 state dict (offline tests and benchmarks only)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _KeepInit(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)
    torch.manual_seed(seed)
    model = _KeepInit("random", ["2048"], feature_extractor_weights_path=str(path))
    torch.save(model.state_dict(), path)
    return path


# --------------------------------------------------------------------- classifier
class ClassifierExtractor(FeatureExtractor):
    """Any chexgen-trained classifier: a callable on [B,1,H,W] in [0,1] (see module doc)."""

    def __init__(
        self,
        fn: Callable[[torch.Tensor], object],
        input_size: int = 224,
        name: str = "classifier",
        class_names: Sequence[str] | None = None,
        device="cpu",
    ):
        super().__init__(device)
        self.fn = fn
        if isinstance(fn, torch.nn.Module):
            fn.to(self.device).eval()
        self.input_size = int(input_size)
        self.name = name
        self.class_names = list(class_names) if class_names is not None else list(LABELS)

    def networks(self) -> list[torch.nn.Module]:
        return [self.fn] if isinstance(self.fn, torch.nn.Module) else []

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return _resize(_center_crop_square(images), self.input_size)

    def forward(self, x: torch.Tensor) -> ExtractorOutput:
        out = self.fn(x)
        feats, scores = None, None
        if isinstance(out, dict):
            feats = out.get("features")
            scores = out.get("scores", out.get("logits"))
        elif isinstance(out, (tuple, list)):
            feats, scores = out[0], (out[1] if len(out) > 1 else None)
        else:
            feats = out
            if out.ndim == 2 and out.shape[1] == len(self.class_names):
                scores = out
        if feats is None:
            feats = scores
        if feats is None:
            raise ChexgenError(f"classifier {self.name}: returned neither features nor scores")
        feats = torch.as_tensor(feats).flatten(1)
        self.dim = int(feats.shape[1])
        if scores is not None:
            scores = map_scores_to_labels(torch.as_tensor(scores), self.class_names)
        return ExtractorOutput(features=feats, scores=scores)


def build_extractor(
    kind: str, weights: str | None = None, device="cpu", random_init: bool = False, precision: str = "fp32"
) -> FeatureExtractor:
    """Make an extractor by kind (``xrv``, ``clip``, ``inception``, ``rad-dino``, ``dinov2``); see the module doc
    for ``weights``.

    ``precision``: see :meth:`FeatureExtractor.set_precision`.
    """
    if kind == "xrv":
        ext = XRVDenseNetExtractor.from_weights(weights, device=device, random_init=random_init)
        return ext.set_precision(precision)
    if kind == "clip":
        return OpenClipExtractor.from_weights(weights, device=device, random_init=random_init).set_precision(precision)
    if kind == "inception":
        if random_init and weights is None:
            import tempfile

            weights = str(write_random_inception_weights(Path(tempfile.mkdtemp()) / "inception-random.pth"))
        return InceptionV3Extractor(weights, device=device).set_precision(precision)
    if kind in ("rad-dino", "dinov2"):
        if random_init:
            raise ChexgenError(f"--random-init is not available for {kind}: pass a local folder with --weights")
        from chexgen.evaluation.dino import HFVisionExtractor

        return HFVisionExtractor.from_pretrained(kind, weights, device=device).set_precision(precision)
    raise ChexgenError(f"unknown feature extractor {kind!r}; expected one of {EXTRACTOR_KINDS} or a classifier path")


def extract_features(
    extractor: FeatureExtractor,
    images: torch.Tensor | Iterable[np.ndarray],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "features",
) -> FeatureSet:
    """Run ``extractor`` over images ([N,1,H,W] tensor or an iterable of (H, W) arrays of one size)."""
    from tqdm.auto import tqdm

    feats, scores = [], []

    def flush(batch: list) -> None:
        out = extractor(torch.stack([torch.as_tensor(b).float().reshape(1, *np.shape(b)[-2:]) for b in batch]))
        feats.append(out.features.numpy())
        if out.scores is not None:
            scores.append(out.scores.numpy())

    if isinstance(images, torch.Tensor):
        items: Iterable = images
        total = images.shape[0]
    else:
        items = images
        total = len(images) if hasattr(images, "__len__") else None
    batch: list = []
    for img in tqdm(items, total=total, desc=desc, disable=not progress, unit="img"):
        batch.append(img)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if not feats:
        raise ValueError("no images to extract features from")
    f = np.concatenate(feats).astype(np.float64)
    s = np.concatenate(scores).astype(np.float64) if len(scores) == len(feats) else None
    return FeatureSet(features=f, scores=s)
