"""The central decoder: cross-attention from spatial queries to every device's tokens.

What makes it physics-aware:

1. *Positions in metres.* Each token carries where its receiver is (x in metres) and its
   offsets to the 5 sources, as Fourier features; each query carries the (x, z) in metres of
   the map cell it reconstructs.
2. *A midpoint prior.* In surface reflection data, a reflector at lateral position x shows up
   at source-receiver pairs whose midpoint ``(x_s + x_r) / 2`` is near x (common-midpoint
   geometry). Each attention head adds ``-w_h * min_s |x_q - (x_s + x_r)/2| / 700 m`` to its
   logits, with a learnt ``w_h >= 0`` per head, so heads can follow the geometry or ignore it.
   ``use_prior=False`` turns it off for the ablation.
3. *A presence mask.* Absent devices' tokens get ``-inf`` logits: they neither crash the
   decoder nor influence its output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from epic.models.layers import UpsamplingHead, fourier_features

__all__ = ["CrossAttentionDecoder", "PhysicalGeometry"]


class PhysicalGeometry(nn.Module):
    """Receiver, source and query positions in metres (buffers, not learnt).

    Attributes:
        receiver_x_m: ``(n_rx,)``; source_x_m: ``(n_src,)``;
        query_xz_m: ``(grid*grid, 2)`` centres of the query cells (x, z) in metres.
    """

    def __init__(self, n_rx: int = 70, dx_m: float = 10.0,
                 source_x_m: tuple[float, ...] = (0.0, 170.0, 340.0, 520.0, 690.0),
                 grid: int = 10, nz: int = 70):
        super().__init__()
        self.aperture_m = n_rx * dx_m
        self.register_buffer("receiver_x_m", torch.arange(n_rx, dtype=torch.float32) * dx_m)
        self.register_buffer("source_x_m", torch.tensor(source_x_m, dtype=torch.float32))
        cell_m = nz * dx_m / grid
        centres = (torch.arange(grid, dtype=torch.float32) + 0.5) * cell_m
        z, x = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("query_xz_m", torch.stack([x.flatten(), z.flatten()], dim=-1))

    def midpoint_distance(self) -> torch.Tensor:
        """``(Q, n_rx)``: min over sources of |x_q - midpoint(source, receiver)| / aperture."""
        mid = (self.source_x_m[:, None] + self.receiver_x_m[None, :]) / 2  # (n_src, n_rx)
        xq = self.query_xz_m[:, 0]
        dist = (xq[:, None, None] - mid[None]).abs().amin(dim=1)  # (Q, n_rx)
        return dist / self.aperture_m


class _CrossBlock(nn.Module):
    """Pre-norm block: cross-attention (with bias and mask), self-attention, feed-forward."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.kv, self.o = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_s, self.norm_f = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def cross(self, q_in: torch.Tensor, kv_in: torch.Tensor, bias: torch.Tensor,
              key_mask: torch.Tensor) -> torch.Tensor:
        b, nq, d = q_in.shape
        h, dh = self.heads, d // self.heads
        q = self.q(self.norm_q(q_in)).view(b, nq, h, dh).transpose(1, 2)  # (B, h, Q, dh)
        k, v = self.kv(self.norm_kv(kv_in)).view(b, -1, 2, h, dh).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / dh**0.5 + bias  # (B, h, Q, K)
        logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(logits, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, nq, d)
        return self.o(out)

    def forward(self, q, kv, bias, key_mask):
        q = q + self.cross(q, kv, bias, key_mask)
        s = self.norm_s(q)
        q = q + self.self_attn(s, s, s, need_weights=False)[0]
        return q + self.ff(self.norm_f(q))


class CrossAttentionDecoder(nn.Module):
    """All devices' tokens ``(B, n_rx, token_dim)`` + presence ``(B, n_rx)`` -> ``(B, 1, 70, 70)``.

    Args:
        token_dim: latent values per receiver token.
        dim, heads, depth: attention width, heads and number of blocks.
        grid: queries form a grid x grid lattice over the 700 m x 700 m map.
        use_prior: add the midpoint prior to the attention logits.
        upsample: ``"transpose"`` or ``"resize"`` (see :class:`UpsamplingHead`).
        head_widths: the head's channels at 20, 40 and 80 cells.
    """

    def __init__(self, token_dim: int = 64, dim: int = 128, heads: int = 4, depth: int = 3,
                 grid: int = 10, use_prior: bool = True, n_freqs: int = 8,
                 upsample: str = "transpose", head_widths: tuple[int, ...] = (128, 64, 32)):
        super().__init__()
        self.geometry = PhysicalGeometry(grid=grid)
        self.grid, self.heads, self.use_prior, self.n_freqs = grid, heads, use_prior, n_freqs
        n_src = len(self.geometry.source_x_m)
        self.token_in = nn.Linear(token_dim, dim)
        self.token_pos = nn.Sequential(nn.Linear(2 * n_freqs * (1 + n_src), dim), nn.GELU(),
                                       nn.Linear(dim, dim))
        self.query_pos = nn.Sequential(nn.Linear(4 * n_freqs, dim), nn.GELU(), nn.Linear(dim, dim))
        self.query_embed = nn.Parameter(torch.zeros(grid * grid, dim))
        self.prior_weight = nn.Parameter(torch.full((heads,), 2.0))  # softplus -> w_h >= 0
        self.blocks = nn.ModuleList(_CrossBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = UpsamplingHead(dim, grid, widths=tuple(head_widths), upsample=upsample)

    def _token_features(self) -> torch.Tensor:
        g = self.geometry
        scale = g.aperture_m
        offsets = g.receiver_x_m[:, None] - g.source_x_m[None, :]  # (n_rx, n_src)
        feats = [fourier_features(g.receiver_x_m, self.n_freqs, scale)]
        feats += [fourier_features(offsets[:, s], self.n_freqs, scale)
                  for s in range(offsets.shape[1])]
        return torch.cat(feats, dim=-1)  # (n_rx, 2F(1 + n_src))

    def _query_features(self) -> torch.Tensor:
        xz = self.geometry.query_xz_m
        scale = self.geometry.aperture_m
        return torch.cat([fourier_features(xz[:, 0], self.n_freqs, scale),
                          fourier_features(xz[:, 1], self.n_freqs, scale)], dim=-1)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        kv = self.token_in(tokens) + self.token_pos(self._token_features())[None]
        q = (self.query_embed + self.query_pos(self._query_features()))[None].expand(b, -1, -1)
        if self.use_prior:
            w = F.softplus(self.prior_weight)[:, None, None]  # (h, 1, 1)
            bias = (-w * self.geometry.midpoint_distance()[None] * 10.0)[None]  # (1, h, Q, K)
        else:
            bias = torch.zeros((), device=tokens.device)
        # a sample with every device absent attends to nothing: keep one key to avoid NaN,
        # then zero its output below
        none = ~present.any(dim=1)
        key_mask = present | none[:, None]
        for block in self.blocks:
            q = block(q, kv, bias, key_mask)
        q = self.norm(q)
        q = torch.where(none[:, None, None], torch.zeros_like(q), q)
        grid = q.transpose(1, 2).reshape(b, -1, self.grid, self.grid)  # (B, dim, g, g)
        return self.head(grid)
