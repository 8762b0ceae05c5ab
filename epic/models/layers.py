"""Small building blocks shared by the models (torch)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["UpsamplingHead", "conv_bn_act", "fourier_features"]


def conv_bn_act(
    c_in: int,
    c_out: int,
    kernel: int | tuple[int, int] = 3,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 1,
    act: nn.Module | None = None,
    transpose: bool = False,
) -> nn.Sequential:
    """Conv (or transposed conv) + BatchNorm + activation (LeakyReLU 0.2 unless given)."""
    conv_cls = nn.ConvTranspose2d if transpose else nn.Conv2d
    return nn.Sequential(
        conv_cls(c_in, c_out, kernel, stride=stride, padding=padding),
        nn.BatchNorm2d(c_out),
        act if act is not None else nn.LeakyReLU(0.2, inplace=True),
    )


def fourier_features(x: torch.Tensor, n_freqs: int, scale: float) -> torch.Tensor:
    """Sin/cos features of a physical coordinate.

    Args:
        x: ``(...,)`` positions in metres.
        n_freqs: number of octaves; features use wavelengths ``2 * scale / 2**k``.
        scale: the aperture in metres (70 cells x 10 m = 700 m for OpenFWI).

    Returns:
        ``(..., 2 * n_freqs)`` features.
    """
    k = torch.arange(n_freqs, device=x.device, dtype=x.dtype)
    angles = x[..., None] / scale * math.pi * (2.0**k)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class UpsamplingHead(nn.Module):
    """Feature grid ``(B, C, s, s)`` -> velocity map ``(B, 1, 70, 70)`` in [-1, 1].

    Doubles the grid until it reaches at least 70, centre-crops to 70 x 70 and ends in a
    tanh, like InversionNet's decoder. ``upsample="transpose"`` doubles with 4x4 stride-2
    transposed convolutions (the shipped checkpoints); ``"resize"`` with nearest-neighbour
    resizing followed by a 3x3 convolution, which cannot leave the checkerboard that
    overlapping transposed-convolution kernels print at the coarse grid's period.
    """

    def __init__(self, c_in: int, start_size: int, widths: tuple[int, ...] = (128, 64, 32),
                 upsample: str = "transpose"):
        super().__init__()
        if upsample not in ("transpose", "resize"):
            raise ValueError(f"UpsamplingHead: upsample must be transpose or resize, got "
                             f"{upsample!r}")
        layers: list[nn.Module] = []
        size, c = start_size, c_in
        for width in widths:
            if upsample == "transpose":
                layers.append(conv_bn_act(c, width, 4, 2, 1, transpose=True))
            else:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv_bn_act(c, width)]
            layers.append(conv_bn_act(width, width))
            size, c = size * 2, width
        if size < 70:
            raise ValueError(
                f"UpsamplingHead: {start_size} doubled {len(widths)} times is {size} < 70"
            )
        self.crop = (size - 70) // 2
        self.body = nn.Sequential(*layers)
        self.out = conv_bn_act(c, 1, act=nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        c = self.crop
        if c:
            x = x[..., c : c + 70, c : c + 70]
        return self.out(x)
