"""InversionNet (Wu and Lin, 2019), the centralized baseline, as released with OpenFWI.

Same architecture as OpenFWI's ``network.py`` (dims 32/64/128/256/512, 24.4 M parameters):
an encoder of conv + BN + LeakyReLU(0.2) blocks that first compresses time with (k x 1)
kernels, then both axes, down to a 512-vector, and a decoder of transposed convolutions up to
80 x 80, cropped to 70 x 70, ending in conv + BN + tanh. It sees all 70 receivers' raw data.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from epic.models.layers import conv_bn_act

__all__ = ["InversionNet"]


class InversionNet(nn.Module):
    """``(B, 5, 1000, 70)`` normalised gathers -> ``(B, 1, 70, 70)`` normalised velocity."""

    def __init__(self, dims: tuple[int, int, int, int, int] = (32, 64, 128, 256, 512)):
        super().__init__()
        d1, d2, d3, d4, d5 = dims
        t1 = dict(kernel=(3, 1), padding=(1, 0))  # time-only kernels
        self.encoder = nn.Sequential(
            conv_bn_act(5, d1, (7, 1), (2, 1), (3, 0)),  # (B, 32, 500, 70)
            conv_bn_act(d1, d2, stride=(2, 1), **t1),  # (B, 64, 250, 70)
            conv_bn_act(d2, d2, **t1),
            conv_bn_act(d2, d2, stride=(2, 1), **t1),  # (B, 64, 125, 70)
            conv_bn_act(d2, d2, **t1),
            conv_bn_act(d2, d3, stride=(2, 1), **t1),  # (B, 128, 63, 70)
            conv_bn_act(d3, d3, **t1),
            conv_bn_act(d3, d3, stride=2),  # (B, 128, 32, 35)
            conv_bn_act(d3, d3),
            conv_bn_act(d3, d4, stride=2),  # (B, 256, 16, 18)
            conv_bn_act(d4, d4),
            conv_bn_act(d4, d4, stride=2),  # (B, 256, 8, 9)
            conv_bn_act(d4, d4),
            conv_bn_act(d4, d5, (8, math.ceil(70 / 8)), padding=0),  # (B, 512, 1, 1)
        )
        self.decoder = nn.Sequential(
            conv_bn_act(d5, d5, 5, 2, 0, transpose=True),  # (B, 512, 5, 5)
            conv_bn_act(d5, d5),
            conv_bn_act(d5, d4, 4, 2, 1, transpose=True),  # (B, 256, 10, 10)
            conv_bn_act(d4, d4),
            conv_bn_act(d4, d3, 4, 2, 1, transpose=True),  # (B, 128, 20, 20)
            conv_bn_act(d3, d3),
            conv_bn_act(d3, d2, 4, 2, 1, transpose=True),  # (B, 64, 40, 40)
            conv_bn_act(d2, d2),
            conv_bn_act(d2, d1, 4, 2, 1, transpose=True),  # (B, 32, 80, 80)
            conv_bn_act(d1, d1),
        )
        self.head = conv_bn_act(d1, 1, act=nn.Tanh())  # (B, 1, 70, 70)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``present`` is accepted for a common interface and ignored: raw data has no latents."""
        x = self.decoder(self.encoder(x))
        return self.head(x[..., 5:75, 5:75])
