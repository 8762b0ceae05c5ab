"""Models (torch): device encoder, cross-attention decoder, InversionNet and baselines."""

from epic.models.baselines import EqualFusionModel, IsolatedModel
from epic.models.decoder import CrossAttentionDecoder
from epic.models.encoder import DeviceEncoder
from epic.models.epic import DistributedModel, EPICModel
from epic.models.inversionnet import InversionNet
from epic.models.registry import DISTRIBUTED, MODELS, build_model

__all__ = [
    "DISTRIBUTED",
    "MODELS",
    "CrossAttentionDecoder",
    "DeviceEncoder",
    "DistributedModel",
    "EPICModel",
    "EqualFusionModel",
    "InversionNet",
    "IsolatedModel",
    "build_model",
]
