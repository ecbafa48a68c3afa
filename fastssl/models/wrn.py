"""Wide ResNets of the FixMatch / USB classic-CV setups.

WRN-28-2 (CIFAR-10, SVHN), WRN-28-8 (CIFAR-100) and USB's `wrn_var_37_2` (STL-10, 96x96), with the
details those results depend on:

- pre-activation blocks: BN -> LeakyReLU(0.1) -> conv3x3 -> BN -> LeakyReLU(0.1) -> conv3x3, plus identity
  or a 1x1 projection shortcut;
- `activate_before_residual` in the first block of the first group: its shortcut takes the activated input
  (the stem output has not been through a BN yet);
- BN momentum 0.001 in PyTorch's convention (TF's decay 0.999); the final BN has eps 1e-3 as in USB;
- init: conv weights kaiming-normal (fan_out, leaky_relu gain sqrt(2), i.e. std = sqrt(2 / (k*k*C_out))),
  BN weight 1 / bias 0, head xavier-normal weight and zero bias.

One difference from USB's PyTorch port, kept on purpose: in the first block of groups 2 and 3 (and 4 in
WRN-37-2) USB feeds the *raw* input to conv1 and computes bn1/relu1 only to throw the result away, so those
bn1 parameters never get a gradient (one reason USB needs DDP's `find_unused_parameters=True`). Here conv1
always reads the activated input, as in the FixMatch authors' TF code (`libml/models.py`, `residual`).
Parameter counts are identical; every parameter gets a gradient (tested).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

BN_MOMENTUM = 0.001
"""PyTorch convention (new = (1 - m) * old + m * batch), i.e. TF's decay 0.999"""
LEAKY_SLOPE = 0.1


def reference_init(model: nn.Module) -> None:
    """The init of FixMatch/USB: kaiming-normal fan_out convs, BN (1, 0), xavier-normal head, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            if m.bias is not None:  # only the stem has one; TF initialises it to zero, USB leaves torch's default
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)


class PreActBlock(nn.Module):
    """out = shortcut(x or a) + conv2(act(bn2(conv1(a)))), a = act(bn1(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM)
        self.act1 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM)
        self.act2 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        projects = c_in != c_out or stride != 1
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if projects else None
        # Only meaningful with a projection: an identity shortcut always carries the raw x (as in the reference).
        self.activate_before_residual = activate_before_residual and projects

    def forward(self, x: Tensor) -> Tensor:
        a = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(a))))
        if self.shortcut is None:
            return x + out
        return self.shortcut(a if self.activate_before_residual else x) + out


class WideResNet(nn.Module):
    """WRN-d-k: a stem conv, `num_groups` groups of n = (d - 4) / 6 blocks (widths 16k, 32k, 64k, ...),
    BN + act, global mean, linear.

    `forward_features(x)` -> (N, num_features) pooled features; `head` is the final Linear;
    `forward(x) = head(forward_features(x))` -> (N, num_classes) logits.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 2,
        num_groups: int = 3,
        first_stride: int = 1,
        in_channels: int = 3,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth={depth} is not 6n+4; use 28 (n=4) or another 6n+4")
        n = (depth - 4) // 6
        widths = [16 * widen_factor << g for g in range(num_groups)]  # 28-2: [32, 64, 128]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=True)  # bias as in the reference
        blocks, c_in = [], 16
        for g, c_out in enumerate(widths):
            for i in range(n):
                stride = (first_stride if g == 0 else 2) if i == 0 else 1
                blocks.append(PreActBlock(c_in, c_out, stride, activate_before_residual=(g == 0)))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM, eps=1e-3)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.num_features = c_in
        self.head = nn.Linear(c_in, num_classes)
        reference_init(self)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.act(self.bn(self.blocks(self.stem(x))))  # (N, F, h, w)
        return out.mean((2, 3))  # (N, F); a mean, not .view, so channels_last input needs no copy

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def wrn_28_2(*, num_classes: int, in_channels: int = 3) -> WideResNet:
    """1,467,626 parameters at 10 classes, as USB's `wrn_28_2` (FixMatch/MixMatch papers: "1.5M")."""
    return WideResNet(num_classes=num_classes, depth=28, widen_factor=2, in_channels=in_channels)


def wrn_28_8(*, num_classes: int, in_channels: int = 3) -> WideResNet:
    """23,401,028 parameters at 100 classes, as USB's `wrn_28_8` (commonly quoted: 23.4M)."""
    return WideResNet(num_classes=num_classes, depth=28, widen_factor=8, in_channels=in_channels)


def wrn_37_2(*, num_classes: int, in_channels: int = 3) -> WideResNet:
    """USB's `wrn_var_37_2` for 96x96 STL-10: stride-2 first group, a 4th group of width 256.

    5,929,450 parameters at 10 classes, as USB's `wrn_var_37_2` (commonly quoted: 5.9M)."""
    return WideResNet(
        num_classes=num_classes, depth=28, widen_factor=2, num_groups=4, first_stride=2, in_channels=in_channels
    )
