"""Model registry: mlp, lenet-300-100, conv2/4/6/8 and resnet18 (CIFAR), built from masked layers.

Every builder takes the dataset's per-sample input shape and class count, a width multiplier, and a
`LayerMaker` that creates the prunable layers, so the same architecture serves Edge-Popup, Biprop and
dense training. No biases anywhere (as in the Conv-N reference networks): every weight is prunable.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from masklab.errors import UserError
from masklab.nn.exact import BatchNorm2d
from masklab.nn.layers import MaskedConv2d, MaskedLinear


@dataclass(frozen=True)
class LayerMaker:
    """Creates prunable layers for one method and sparsity."""

    method: str = "edge-popup"
    sparsity: float = 0.5

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return MaskedLinear(in_features, out_features, self.method, self.sparsity)

    def conv(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
             padding: int = 1) -> nn.Module:
        return MaskedConv2d(in_channels, out_channels, kernel_size, stride, padding, self.method, self.sparsity)

    def batchnorm(self, channels: int) -> nn.Module:
        """Non-affine BatchNorm: nothing trainable besides the scores."""
        return BatchNorm2d(channels, affine=False)


def scaled(width: float, channels: int, model: str) -> int:
    """A width times the multiplier, rounded; zero channels is an error."""
    out = int(round(channels * width))
    if out < 1:
        raise UserError(f"config field 'width' = {width!r} is invalid: model {model} would get {out} channels "
                        f"in a layer of {channels}; use a width of at least {0.5 / channels:.3g}")
    return out


def _image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UserError(f"model {model} needs image inputs (channels x height x width) but the dataset gives "
                        f"samples of shape {tuple(input_shape)}; use model mlp or lenet-300-100")
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


def mlp(input_shape, n_classes, width, make, hidden=(256, 256), name="mlp") -> nn.Module:
    sizes = [math.prod(input_shape)] + [scaled(width, h, name) for h in hidden] + [n_classes]
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(len(sizes) - 1):
        layers.append((f"fc{i + 1}", make.linear(sizes[i], sizes[i + 1])))
        if i < len(sizes) - 2:
            layers.append((f"relu{i + 1}", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


def lenet_300_100(input_shape, n_classes, width, make) -> nn.Module:
    return mlp(input_shape, n_classes, width, make, hidden=(300, 100), name="lenet-300-100")


def conv_net(channels: tuple[int, ...], name: str) -> Callable:
    """Conv-N: 3x3 convs (padding 1) with ReLU, 2x2 max-pool after every second conv, then 256-256-classes."""

    def build(input_shape, n_classes, width, make) -> nn.Module:
        c, h, w = _image_shape(input_shape, name)
        layers: list[tuple[str, nn.Module]] = []
        for i, out in enumerate(channels):
            out = scaled(width, out, name)
            layers += [(f"conv{i + 1}", make.conv(c, out)), (f"relu{i + 1}", nn.ReLU())]
            c = out
            if i % 2 == 1:
                layers.append((f"pool{i // 2 + 1}", nn.MaxPool2d(2)))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise UserError(f"model {name} does not fit inputs of shape {tuple(input_shape)}: "
                                    f"{len(channels) // 2} poolings need at least {2 ** (len(channels) // 2)} "
                                    "pixels per side; use a smaller conv-N or mlp")
        hidden = scaled(width, 256, name)
        layers += [("flatten", nn.Flatten()), ("fc1", make.linear(c * h * w, hidden)), ("relu_fc1", nn.ReLU()),
                   ("fc2", make.linear(hidden, hidden)), ("relu_fc2", nn.ReLU()),
                   ("fc3", make.linear(hidden, n_classes))]
        return nn.Sequential(OrderedDict(layers))

    return build


class BasicBlock(nn.Module):
    def __init__(self, make: LayerMaker, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = make.conv(c_in, c_out, 3, stride, 1)
        self.bn1 = make.batchnorm(c_out)
        self.conv2 = make.conv(c_out, c_out, 3, 1, 1)
        self.bn2 = make.batchnorm(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(make.conv(c_in, c_out, 1, stride, 0), make.batchnorm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stem (stride 1), BasicBlocks [2, 2, 2, 2], non-affine BatchNorm, global average
    pool."""

    def __init__(self, input_shape, n_classes, width, make):
        super().__init__()
        c, h, w = _image_shape(input_shape, "resnet18")
        if h < 8 or w < 8:
            raise UserError(f"model resnet18 does not fit inputs of shape {tuple(input_shape)}: it needs at "
                            "least 8x8 pixels; use mlp")
        widths = [scaled(width, x, "resnet18") for x in (64, 128, 256, 512)]
        self.conv1 = make.conv(c, widths[0], 3, 1, 1)
        self.bn1 = make.batchnorm(widths[0])
        blocks, c_in = [], widths[0]
        for stage, c_out in enumerate(widths):
            for b in range(2):
                blocks.append(BasicBlock(make, c_in, c_out, 2 if (stage > 0 and b == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = make.linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        # global average pool as a mean: adaptive_avg_pool2d's CUDA backward has no deterministic kernel (it
        # raises under torch.use_deterministic_algorithms); on CPU the two give the same bits
        return self.fc(out.mean((2, 3)))


MODELS: dict[str, Callable] = {
    "mlp": mlp,
    "lenet-300-100": lenet_300_100,
    "conv2": conv_net((64, 64), "conv2"),
    "conv4": conv_net((64, 64, 128, 128), "conv4"),
    "conv6": conv_net((64, 64, 128, 128, 256, 256), "conv6"),
    "conv8": conv_net((64, 64, 128, 128, 256, 256, 512, 512), "conv8"),
    "resnet18": ResNet18,
}


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, width: float = 1.0,
                method: str = "edge-popup", sparsity: float = 0.5, maker=None) -> nn.Module:
    """An uninitialised model (see `masklab.nn.init_model`); raises UserError if it cannot fit the data.

    `maker` replaces the default `LayerMaker(method, sparsity)`, e.g. with one that makes stacked layers.
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    maker = LayerMaker(method, sparsity) if maker is None else maker
    return MODELS[name](tuple(input_shape), int(n_classes), float(width), maker)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
