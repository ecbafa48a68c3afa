"""A small CNN for CPU runs: the offline default (sklearn digits at 16x16, 1 channel) and quick 32x32 checks.

Three (conv3x3 -> BN -> LeakyReLU(0.1)) stages, 2x2 max-pool after the first two, a global mean, a linear
head. Widths 32/64/128: 94,186 parameters at 1 channel and 10 classes (94,762 at 3 channels). Fully
convolutional up to the mean, so one network serves 16x16 and 32x32 inputs and any channel count.

Speed (eager, 2 shared CPU cores, torch 2.13): a full SGD step (forward, cross-entropy, backward, Nesterov
SGD) on 480 images (B=32, mu=7, 1 + 2*7 views) of 1x16x16 took a median 100 ms (10 steps/s, 30 steps after 5
warm-up); at 1x32x32, 570 ms (1.75 steps/s, with the machine under load).
"""
from __future__ import annotations

from torch import Tensor, nn

from fastssl.models.wrn import LEAKY_SLOPE, reference_init

CNN_BN_MOMENTUM = 0.01
"""Not the WRN's 0.001: CPU runs are ~1-2k steps, and with 0.001 the running statistics would still carry
(0.999)^1500 = 22% of their initial (0, 1) values at the end; 0.01 forgets them within a few hundred steps."""


def _stage(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # no bias: the BN that follows has one
        nn.BatchNorm2d(c_out, momentum=CNN_BN_MOMENTUM),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    ]


class SmallCNN(nn.Module):
    """`forward_features(x)` -> (N, num_features); `head` is the final Linear; `forward` -> (N, num_classes)."""

    def __init__(self, *, num_classes: int, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            *_stage(in_channels, c1), nn.MaxPool2d(2),  # 16x16 -> 8x8
            *_stage(c1, c2), nn.MaxPool2d(2),  # -> 4x4
            *_stage(c2, c3),
        )
        self.num_features = c3
        self.head = nn.Linear(c3, num_classes)
        reference_init(self)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x).mean((2, 3))  # (N, C, h, w) -> (N, num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def cnn_small(*, num_classes: int, in_channels: int = 3) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)
