"""EPIC: per-device encoders (on the devices) + a cross-attention decoder (on central).

:class:`DistributedModel` holds what all distributed models share: the receivers are split
into contiguous device ranges, one :class:`DeviceEncoder` (weights shared by all devices)
encodes each device's ``(B, 5, 1000, 14)`` slice into ``(B, 14, token_dim)`` tokens, and the
tokens of absent devices are zeroed before any fusion, so that their values cannot reach
the output. Subclasses fuse the tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from epic.models.decoder import CrossAttentionDecoder
from epic.models.encoder import DeviceEncoder

__all__ = ["DistributedModel", "EPICModel"]


class DistributedModel(nn.Module):
    """Base: ``forward(x (B, 5, 1000, 70), present (B, n_devices) bool) -> (B, 1, 70, 70)``."""

    def __init__(self, token_dim: int = 64, n_devices: int = 5, n_rx: int = 70,
                 encoder_width: int = 64, decimate: int = 4,
                 time_strides: tuple[int, ...] | None = None):
        super().__init__()
        if n_rx % n_devices:
            raise ValueError(f"{n_rx} receivers do not split evenly over {n_devices} devices")
        self.n_devices, self.n_rx, self.token_dim = n_devices, n_rx, token_dim
        self.rx_per_device = n_rx // n_devices
        self.encoder = DeviceEncoder(token_dim=token_dim, width=encoder_width, decimate=decimate,
                                     time_strides=time_strides)

    def latent_values_per_device(self) -> int:
        """int8 values one device sends per shot-gather."""
        return self.rx_per_device * self.token_dim

    def encode(self, x: torch.Tensor, decimated: bool = False) -> torch.Tensor:
        """``(B, 5, nt, n_rx)`` -> ``(B, n_devices, rx_per_device, token_dim)`` tokens.

        ``decimated=True``: ``x`` is already through the encoder's fixed Decimator,
        ``(B, 5, nt / decimate, n_rx)`` (training caches it so; see :mod:`epic.data.cache`).
        """
        b, s, t, _ = x.shape
        k = self.rx_per_device
        per_device = x.reshape(b, s, t, self.n_devices, k).permute(0, 3, 1, 2, 4)
        per_device = per_device.reshape(b * self.n_devices, s, t, k)
        tokens = (self.encoder.encode_decimated(per_device) if decimated
                  else self.encoder(per_device))
        return tokens.reshape(b, self.n_devices, k, self.token_dim)

    def decode(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None,
                decimated: bool = False) -> torch.Tensor:
        if present is None:
            present = torch.ones(x.shape[0], self.n_devices, dtype=torch.bool, device=x.device)
        return self.decode(self.encode(x, decimated), present)

    def _masked(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return torch.where(present[:, :, None, None], tokens, torch.zeros_like(tokens))


class EPICModel(DistributedModel):
    """Device encoders + :class:`CrossAttentionDecoder` (``use_prior`` toggles the midpoint
    prior for the ablation; ``head_widths`` sets the upsampling head's channels)."""

    def __init__(self, token_dim: int = 64, use_prior: bool = True, dim: int = 128,
                 depth: int = 3, heads: int = 4, upsample: str = "transpose",
                 head_widths: tuple[int, ...] = (128, 64, 32), **kwargs):
        super().__init__(token_dim=token_dim, **kwargs)
        self.decoder = CrossAttentionDecoder(token_dim=token_dim, dim=dim, heads=heads,
                                             depth=depth, use_prior=use_prior,
                                             upsample=upsample, head_widths=head_widths)

    def decode(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``tokens (B, n_dev, k, token_dim)`` + ``present (B, n_dev)`` -> ``(B, 1, 70, 70)``."""
        b = tokens.shape[0]
        flat = self._masked(tokens, present).reshape(b, self.n_rx, self.token_dim)
        rx_present = present.repeat_interleave(self.rx_per_device, dim=1)  # (B, n_rx)
        return self.decoder(flat, rx_present)
