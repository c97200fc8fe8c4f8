"""Downstream networks: the paper's architectures, with sizes that shrink for CPU tests.

- classification: torchvision DenseNet121 (``arch`` may name ``resnet18`` / ``resnet50`` /
  ``densenet121`` or ``densenet-tiny``, a real torchvision ``DenseNet`` with two small blocks);
- segmentation: segmentation-models-pytorch ``Unet`` with a ResNet34 encoder (``arch`` names the
  encoder; ``width`` shrinks the decoder);
- detection: torchvision Faster R-CNN with a ResNet50-FPN backbone (``arch`` names the ResNet);
- regression: torchvision ResNet50 with a one-output head.

Initialisation (``init``): ``"auto"`` uses ImageNet weights when torchvision's file for the
backbone is already in the torch hub cache and trains from scratch otherwise; ``"imagenet"``
insists on them (error if absent); ``"scratch"`` never loads; any other value is a path to a
state dict, or to a classifier folder saved by chexgen (``chexgen downstream classifier``: its
backbone, to continue training it with a fresh head). Nothing is downloaded. :func:`build_model` returns the model and the init actually
used, so results can say which.

Inputs are gray (B, 1, S, S) in [0, 1]; :class:`GrayInput` repeats them to 3 channels and applies
the ImageNet normalisation so pretrained and scratch models see the same data.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from chexgen.errors import ChexgenError

__all__ = ["ModelSpec", "GrayInput", "build_model", "imagenet_weights_file", "DEFAULT_ARCH"]

log = logging.getLogger(__name__)

DEFAULT_ARCH = {
    "classification": "densenet121",
    "segmentation": "resnet34",
    "detection": "resnet50",
    "regression": "resnet50",
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
_CLASSIFIER_ARCHS = _RESNETS + ("densenet121", "densenet-tiny")


@dataclass
class ModelSpec:
    """Architecture choices; ``arch=None`` means the paper's default for the task."""

    task: str
    num_outputs: int
    image_size: int = 224
    arch: str | None = None
    init: str = "auto"
    width: int = 0  # 0: library default; >0: smaller UNet decoder (tests)

    @property
    def arch_name(self) -> str:
        return self.arch or DEFAULT_ARCH[self.task]


class GrayInput(nn.Module):
    """Repeat a gray image to RGB and normalise with ImageNet statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class Wrapped(nn.Module):
    """``GrayInput`` followed by a network; ``net`` is the part whose weights transfer."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.input = GrayInput()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.input(x))


def imagenet_weights_file(arch: str) -> Path | None:
    """The torch-hub cache file of torchvision's ImageNet weights for ``arch``, if present."""
    from torchvision.models import get_model_weights

    if arch not in _RESNETS + ("densenet121",):
        return None
    weights = get_model_weights(arch).IMAGENET1K_V1
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return path if path.is_file() else None


_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _backbone_state(arch: str, init: str) -> tuple[dict | None, str]:
    """Resolve ``init`` to an ImageNet/user state dict for a torchvision backbone (or None)."""
    if init == "scratch":
        return None, "scratch"
    if init in ("auto", "imagenet"):
        path = imagenet_weights_file(arch)
        if path is None:
            if init == "imagenet":
                raise ChexgenError(
                    f"ImageNet weights for {arch} are not in {torch.hub.get_dir()}/checkpoints; copy torchvision's "
                    f"file there or use init: scratch"
                )
            return None, "scratch"
        label = "imagenet"
    else:
        path = Path(init)
        if path.is_dir() and (path / "model.safetensors").is_file():
            return _saved_classifier_state(path, arch), str(path)
        if not path.is_file():
            raise ChexgenError(f"init weights {path}: file not found (or use init: auto / imagenet / scratch)")
        label = str(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # torchvision's DenseNet files predate the current key names ("norm.1" -> "norm1").
    state = {(_DENSENET_OLD_KEY.sub(lambda m: m.group(1) + m.group(2), k)): v for k, v in state.items()}
    return state, label


def _saved_classifier_state(folder: Path, arch: str) -> dict:
    """The network weights of a classifier folder written by ``save_classifier`` (fp32: the network is built
    in fp32 and the saved fp16 tensors are copied into it).

    Read through :func:`chexgen.downstream.classifier.load_classifier`, so a folder it would refuse (keys
    missing, weights that do not fit the saved arch) is refused here with the same message.
    """
    import json

    from chexgen.downstream.classifier import load_classifier  # that module imports this one

    config_file = folder / "config.json"
    saved_arch = json.loads(config_file.read_text(encoding="utf-8")).get("arch") if config_file.is_file() else None
    if saved_arch is not None and saved_arch != arch:
        raise ChexgenError(f"init weights {folder}: a {saved_arch} classifier, not {arch}; pass --arch {saved_arch}")
    return load_classifier(folder).model.net.state_dict()  # the torchvision network inside Wrapped (GrayInput + net)


def _load_partial(module: nn.Module, state: dict, skip_prefixes: tuple[str, ...]) -> None:
    """Load matching tensors; the task head (``skip_prefixes``) keeps its fresh initialisation."""
    own = module.state_dict()
    use = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and not k.startswith(skip_prefixes)}
    missing = [k for k in own if k not in use and not k.startswith(skip_prefixes) and not k.endswith("num_batches_tracked")]
    if missing:
        log.warning("init weights: %d backbone tensors not found (first: %s)", len(missing), missing[:3])
    module.load_state_dict(use, strict=False)


def _classifier(arch: str, num_outputs: int, init: str) -> tuple[nn.Module, str]:
    import torchvision.models as tvm

    if arch not in _CLASSIFIER_ARCHS:
        raise ChexgenError(f"unknown classifier arch {arch!r}; expected one of {_CLASSIFIER_ARCHS}")
    if arch == "densenet-tiny":
        net = tvm.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=num_outputs)
        if init not in ("auto", "scratch"):
            raise ChexgenError("densenet-tiny has no ImageNet weights; use init: scratch")
        return net, "scratch"
    net = tvm.get_model(arch, weights=None, num_classes=1000)
    state, label = _backbone_state(arch, init)
    if state is not None:
        _load_partial(net, state, skip_prefixes=("fc.", "classifier."))
    if arch.startswith("densenet"):
        net.classifier = nn.Linear(net.classifier.in_features, num_outputs)
    else:
        net.fc = nn.Linear(net.fc.in_features, num_outputs)
    return net, label


def _unet(spec: ModelSpec) -> tuple[nn.Module, str]:
    import segmentation_models_pytorch as smp

    arch = spec.arch_name
    kwargs: dict = {}
    if spec.width:
        w = spec.width
        kwargs = {"encoder_depth": 3, "decoder_channels": (4 * w, 2 * w, w)}
    net = smp.Unet(encoder_name=arch, encoder_weights=None, in_channels=3, classes=spec.num_outputs, **kwargs)
    label = "scratch"
    if arch in _RESNETS:
        state, label = _backbone_state(arch, spec.init)
        if state is not None:  # smp's ResNet encoder keeps torchvision's key names
            _load_partial(net.encoder, state, skip_prefixes=("fc.",))
    elif spec.init not in ("auto", "scratch"):
        raise ChexgenError(f"offline ImageNet init is available for ResNet encoders only, not {arch!r}")
    return net, label


class _DetectorWrap(nn.Module):
    """Faster R-CNN taking gray (B, 1, S, S) batches; normalisation stays in torchvision's transform."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        imgs = [im.expand(3, -1, -1) for im in images]
        return self.net(imgs, targets)


def _faster_rcnn(spec: ModelSpec) -> tuple[nn.Module, str]:
    import torchvision.models as tvm
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    arch = spec.arch_name
    if arch not in _RESNETS:
        raise ChexgenError(f"unknown detection backbone {arch!r}; expected one of {_RESNETS}")
    body = tvm.get_model(arch, weights=None)
    state, label = _backbone_state(arch, spec.init)
    if state is not None:
        _load_partial(body, state, skip_prefixes=("fc.",))
    c5 = body.fc.in_features
    in_channels = [c5 // 8, c5 // 4, c5 // 2, c5]
    # torchvision's R50-FPN: 256 pyramid channels, 1024-d box head, 512 RoIs per image.
    # ``width`` shrinks all three so CPU tests take seconds, not minutes.
    fpn_ch, rep, rois = (256, 1024, 512) if not spec.width else (4 * spec.width, 16 * spec.width, 64)
    backbone = BackboneWithFPN(
        body, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels, out_channels=fpn_ch, extra_blocks=LastLevelMaxPool(),
    )
    # The default anchors (32..512 px on strides 4..64) suit 800-px inputs; scale them with the
    # input size, but keep each at least twice its level's stride so small inputs still have
    # anchors at many positions.
    scale = spec.image_size / 800.0
    sizes = tuple((max(2 * stride, int(round(s * scale))),) for s, stride in zip((32, 64, 128, 256, 512), (4, 8, 16, 32, 64)))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes))
    net = FasterRCNN(
        backbone,
        min_size=spec.image_size,
        max_size=spec.image_size,
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(fpn_ch * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, spec.num_outputs + 1),  # + background
        box_batch_size_per_image=rois,
        box_detections_per_img=100,
    )
    return _DetectorWrap(net), label


def build_model(spec: ModelSpec) -> tuple[nn.Module, str]:
    """Build the task network; returns ``(model, init_used)`` with init_used in imagenet / scratch / a path."""
    if spec.task in ("classification", "regression"):
        net, label = _classifier(spec.arch_name, spec.num_outputs, spec.init)
        return Wrapped(net), label
    if spec.task == "segmentation":
        net, label = _unet(spec)
        return Wrapped(net), label
    if spec.task == "detection":
        return _faster_rcnn(spec)
    raise ChexgenError(f"unknown task {spec.task!r}")
