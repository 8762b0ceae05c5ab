"""Torch-free runtimes (numpy + LiteRT / ONNX Runtime) for both sides of the testbed.

- :mod:`epic.inference.encoder`: a device's int8 ``.tflite`` encoder on LiteRT
  (``ai-edge-litert``, or ``tflite-runtime``), written by ``epic export``.
- :mod:`epic.inference.decoders`: central's EPIC decoder and InversionNet on ONNX Runtime,
  written by ``epic export-decoders``.

Nothing here imports torch; the runtime packages load when a model is first opened.
"""

from epic.inference.decoders import (
    MANIFEST_FORMAT,
    LatentDecoderRuntime,
    OrtUnavailableError,
    RawDecoderRuntime,
    load_decoder_manifest,
)
from epic.inference.encoder import (
    BackendUnavailableError,
    EncoderRuntime,
    GatherError,
    Latent,
    ModelFileError,
    ModelShapeError,
)

__all__ = [
    "MANIFEST_FORMAT",
    "BackendUnavailableError",
    "EncoderRuntime",
    "GatherError",
    "Latent",
    "LatentDecoderRuntime",
    "ModelFileError",
    "ModelShapeError",
    "OrtUnavailableError",
    "RawDecoderRuntime",
    "load_decoder_manifest",
]
