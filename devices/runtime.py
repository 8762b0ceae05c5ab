"""The device-side encoder runtime (one int8 ``.tflite`` encoder on LiteRT, no torch).

It lives in :mod:`epic.inference.encoder`, beside central's torch-free decoders; this module
re-exports it under the name the device agent, its tests and benchmarks use.
"""

from __future__ import annotations

from epic.inference.encoder import (
    BACKENDS,
    BackendUnavailableError,
    EncoderRuntime,
    GatherError,
    Latent,
    ModelFileError,
    ModelShapeError,
    load_interpreter_class,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "EncoderRuntime",
    "GatherError",
    "Latent",
    "ModelFileError",
    "ModelShapeError",
    "load_interpreter_class",
]
