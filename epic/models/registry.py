"""Model names -> constructors: the lookup table behind ``epic train --model NAME``."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from epic.errors import InputError
from epic.models.baselines import EqualFusionModel, IsolatedModel
from epic.models.epic import EPICModel
from epic.models.inversionnet import InversionNet

__all__ = ["DISTRIBUTED", "MODELS", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "epic": EPICModel,
    "epic-noprior": partial(EPICModel, use_prior=False),
    "epic-resize": partial(EPICModel, upsample="resize"),
    "inversionnet": InversionNet,
    "isolated": IsolatedModel,
    "equal-fusion": EqualFusionModel,
}
"""Every trainable model. ``epic-noprior`` is the ablation without the midpoint prior;
``epic-resize`` is EPIC with a resize-convolution head instead of transposed convolutions."""

DISTRIBUTED = frozenset({"epic", "epic-noprior", "epic-resize", "isolated", "equal-fusion"})
"""Models whose devices send latents (and take ``token_dim``)."""


def build_model(name: str, **config) -> nn.Module:
    """Build model ``name`` with keyword ``config`` (e.g. ``token_dim=64``)."""
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if name not in DISTRIBUTED and config.get("token_dim") is not None:
        raise InputError(f"model {name!r} takes no token_dim (it sends raw data)")
    config = {k: v for k, v in config.items() if v is not None}
    return MODELS[name](**config)
