"""The device encoder: one device's receivers -> a small latent of per-receiver tokens.

Input ``(B, 5, 1000, 14)``: 5 shots (channels) x 1000 time samples x the device's 14
receivers, normalised as OpenFWI. Output ``(B, 14, token_dim)``: one token per receiver, so
the central decoder knows which receiver (and so which position in metres) each came from.

Only ops that quantise well to int8 TFLite: Conv2d (+ BatchNorm, folded at export), ReLU.
Time is compressed by strided (k x 1) convolutions, as in InversionNet; two (3 x 3) layers
mix neighbouring receivers (zero-padded at the device's edges, so a token depends on its own
device only). The last conv spans the remaining 8 time steps: a per-receiver linear map.
With the default ``token_dim = 64`` the latent is 14 x 64 = 896 int8 values, and the encoder
has about 0.12 M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DeviceEncoder"]


def _block(c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DeviceEncoder(nn.Module):
    """``(B, 5, 1000, n_rx)`` -> ``(B, n_rx, token_dim)`` tokens, one per receiver."""

    def __init__(self, token_dim: int = 64, width: int = 64, n_shots: int = 5, nt: int = 1000):
        super().__init__()
        if token_dim < 1 or width < 8:
            raise ValueError(f"token_dim must be >= 1 and width >= 8, got {token_dim}, {width}")
        w2, w4 = width // 4, width // 2
        self.nt = nt
        self.body = nn.Sequential(
            _block(n_shots, w2, (7, 1), (2, 1), (3, 0)),  # (B, 16, 500, 14)
            _block(w2, w4, (3, 1), (2, 1), (1, 0)),  # (B, 32, 250, 14)
            _block(w4, w4, (3, 3), (2, 1), (1, 1)),  # (B, 32, 125, 14)
            _block(w4, width, (3, 1), (2, 1), (1, 0)),  # (B, 64, 63, 14)
            _block(width, width, (3, 3), (2, 1), (1, 1)),  # (B, 64, 32, 14)
            _block(width, width, (3, 1), (2, 1), (1, 0)),  # (B, 64, 16, 14)
            _block(width, width, (3, 1), (2, 1), (1, 0)),  # (B, 64, 8, 14)
        )
        t_left = nt
        for _ in range(7):
            t_left = (t_left + 1) // 2
        self.project = nn.Conv2d(width, token_dim, (t_left, 1))  # (B, token_dim, 1, 14)
        self.token_dim = token_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[2] != self.nt:
            raise ValueError(f"DeviceEncoder: input shape {tuple(x.shape)}, expected (B, 5, "
                             f"{self.nt}, n_rx)")
        z = self.project(self.body(x))  # (B, token_dim, 1, n_rx)
        return z[:, :, 0, :].transpose(1, 2)  # (B, n_rx, token_dim)
