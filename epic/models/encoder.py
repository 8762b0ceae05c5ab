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

``decimate=4`` puts a fixed signal-processing step first: an anti-alias low-pass FIR and 4x
subsampling, 1 ms -> 4 ms (:class:`Decimator`). The 15 Hz Ricker has almost no energy above
60 Hz, well below the new 125 Hz Nyquist, so the traces keep their signal while every later
layer sees a quarter of the samples. It is part of the exported int8 encoder, so the device
still receives 1 ms traces from its sensors and does the decimation itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

__all__ = ["Decimator", "DeviceEncoder", "lowpass_fir"]


def lowpass_fir(taps: int, cutoff: float) -> np.ndarray:
    """Hamming-windowed sinc low-pass, unit DC gain: ``(taps,)`` float64.

    ``cutoff`` is in cycles per input sample (0.5 is the input Nyquist frequency).
    """
    if taps < 3 or taps % 2 == 0 or not 0 < cutoff < 0.5:
        raise ValueError(f"lowpass_fir: need odd taps >= 3 and 0 < cutoff < 0.5, got "
                         f"{taps}, {cutoff}")
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
    return h / h.sum()


class Decimator(nn.Module):
    """Fixed anti-alias low-pass + subsampling along time: ``(B, C, nt, n_rx)`` ->
    ``(B, C, ceil(nt / factor), n_rx)``.

    The filter (41-tap Hamming-windowed sinc, cutoff at 0.8 of the decimated Nyquist
    frequency: 100 Hz for 1 ms -> 4 ms; gain within 0.5 % of 1 up to 60 Hz, below 0.3 % from
    150 Hz, whose energy would fold below the new 125 Hz Nyquist) is a constant, not learnt:
    a depthwise (taps x 1) convolution with stride ``factor``, which the int8 export keeps
    as one convolution.
    """

    def __init__(self, factor: int = 4, channels: int = 5, taps: int = 41):
        super().__init__()
        if factor < 2:
            raise ValueError(f"Decimator: factor must be >= 2, got {factor}")
        self.factor, self.taps = factor, taps
        h = torch.tensor(lowpass_fir(taps, 0.4 / factor), dtype=torch.float32)
        self.register_buffer("kernel", h.view(1, 1, taps, 1).repeat(channels, 1, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel, stride=(self.factor, 1),
                        padding=(self.taps // 2, 0), groups=x.shape[1])

    def output_length(self, nt: int) -> int:
        """Samples left of ``nt`` input samples."""
        return (nt + 2 * (self.taps // 2) - self.taps) // self.factor + 1


def _block(c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int],
           padding: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DeviceEncoder(nn.Module):
    """``(B, 5, 1000, n_rx)`` -> ``(B, n_rx, token_dim)`` tokens, one per receiver."""

    def __init__(self, token_dim: int = 64, width: int = 64, n_shots: int = 5, nt: int = 1000,
                 decimate: int = 1, time_strides: tuple[int, ...] | None = None):
        super().__init__()
        if token_dim < 1 or width < 8:
            raise ValueError(f"token_dim must be >= 1 and width >= 8, got {token_dim}, {width}")
        if decimate not in (1, 4):
            raise ValueError(f"DeviceEncoder: decimate must be 1 or 4, got {decimate}")
        w2, w4 = width // 4, width // 2
        self.nt, self.decimate = nt, decimate
        # decimate=4: after the Decimator (1000 -> 250 samples) the first block keeps the
        # 4 ms rate, the next five halve it and the last keeps it: 250 -> 125 -> 63 -> 32 ->
        # 16 -> 8, the same 8 steps as without it, at about half the multiply-adds. (Halving
        # in the first block as well, down to 4 steps at the end, costs 9 % of MAE at the
        # 1,200 x 5 budget; docs/training.md.)
        self.decimator = Decimator(decimate, n_shots) if decimate > 1 else None
        strides = list(time_strides or ([2] * 7 if decimate == 1 else [1, 2, 2, 2, 2, 2, 1]))
        if len(strides) != 7 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"DeviceEncoder: time_strides must be 7 values of 1 or 2, got "
                             f"{time_strides}")
        s1, s2, s3, s4, s5, s6, s7 = ((s, 1) for s in strides)
        self.body = nn.Sequential(
            _block(n_shots, w2, (7, 1), s1, (3, 0)),  # (B, 16, 500, 14) at decimate=1
            _block(w2, w4, (3, 1), s2, (1, 0)),  # (B, 32, 250, 14)
            _block(w4, w4, (3, 3), s3, (1, 1)),  # (B, 32, 125, 14)
            _block(w4, width, (3, 1), s4, (1, 0)),  # (B, 64, 63, 14)
            _block(width, width, (3, 3), s5, (1, 1)),  # (B, 64, 32, 14)
            _block(width, width, (3, 1), s6, (1, 0)),  # (B, 64, 16, 14)
            _block(width, width, (3, 1), s7, (1, 0)),  # (B, 64, 8, 14)
        )
        t_left = self.decimator.output_length(nt) if self.decimator else nt
        for stride in strides:
            t_left = (t_left + 1) // 2 if stride == 2 else t_left
        self.time_strides = tuple(strides)
        self.project = nn.Conv2d(width, token_dim, (t_left, 1))  # (B, token_dim, 1, 14)
        self.token_dim = token_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[2] != self.nt:
            raise ValueError(f"DeviceEncoder: input shape {tuple(x.shape)}, expected (B, 5, "
                             f"{self.nt}, n_rx)")
        z = self.project(self.body(self.predecimated(x)))  # (B, token_dim, 1, n_rx)
        return z[:, :, 0, :].transpose(1, 2)  # (B, n_rx, token_dim)

    def predecimated(self, x: torch.Tensor) -> torch.Tensor:
        """The Decimator's output, ``(B, 5, nt / decimate, n_rx)`` (``x`` itself at 1)."""
        return x if self.decimator is None else self.decimator(x)

    def encode_decimated(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens from traces already through :meth:`predecimated` (training caches them:
        the Decimator is fixed, so decimating once beats decimating every epoch)."""
        z = self.project(self.body(x))
        return z[:, :, 0, :].transpose(1, 2)  # (B, n_rx, token_dim)
