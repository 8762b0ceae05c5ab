"""General-purpose distributed baselines over the same device encoders as EPIC.

* :class:`IsolatedModel`: each device predicts only its own 14 columns of the map from its
  own tokens (no fusion at all).
* :class:`EqualFusionModel`: the devices' latents are concatenated (absent ones zeroed) and
  decoded by a dense layer and the same upsampling head as EPIC, with no attention and no
  positional knowledge beyond the slot order.
"""

from __future__ import annotations

import torch
from torch import nn

from epic.models.epic import DistributedModel
from epic.models.layers import UpsamplingHead

__all__ = ["EqualFusionModel", "IsolatedModel"]


class IsolatedModel(DistributedModel):
    """Per-receiver MLP: token ``(token_dim,)`` -> its column of 70 depths, tanh."""

    def __init__(self, token_dim: int = 64, hidden: int = 256, nz: int = 70, **kwargs):
        super().__init__(token_dim=token_dim, **kwargs)
        self.column = nn.Sequential(
            nn.Linear(token_dim * 3, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, nz), nn.Tanh(),
        )

    def decode(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b, n_dev, k, _ = tokens.shape
        t = self._masked(tokens, present)
        # each column sees its own token and its neighbours within the same device
        padded = nn.functional.pad(t, (0, 0, 1, 1), mode="replicate")
        ctx = torch.cat([padded[:, :, :-2], t, padded[:, :, 2:]], dim=-1)  # (B, n_dev, k, 3d)
        cols = self.column(ctx)  # (B, n_dev, k, nz)
        cols = torch.where(present[:, :, None, None], cols, torch.zeros_like(cols))
        return cols.reshape(b, n_dev * k, -1).transpose(1, 2)[:, None]  # (B, 1, nz, n_rx)


class EqualFusionModel(DistributedModel):
    """Concatenate all latents -> dense -> ``(64, 5, 5)`` grid -> upsampling head."""

    def __init__(self, token_dim: int = 64, per_device: int = 256, **kwargs):
        super().__init__(token_dim=token_dim, **kwargs)
        self.squeeze = nn.Sequential(nn.Linear(self.latent_values_per_device(), per_device),
                                     nn.GELU())
        self.fuse = nn.Sequential(nn.Linear(self.n_devices * per_device, 64 * 5 * 5), nn.GELU())
        self.head = UpsamplingHead(64, 5, widths=(128, 128, 64, 32))

    def decode(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        per = self.squeeze(self._masked(tokens, present).reshape(b, self.n_devices, -1))
        per = torch.where(present[:, :, None], per, torch.zeros_like(per))
        return self.head(self.fuse(per.reshape(b, -1)).reshape(b, 64, 5, 5))
