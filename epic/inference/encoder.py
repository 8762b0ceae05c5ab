"""The device-side encoder runtime: one int8 ``.tflite`` encoder, no torch.

Used by the devices (``devices.runtime`` re-exports it) and by the export's parity report
(``epic.export``), so parity measures the code the devices run.

:class:`EncoderRuntime` loads an encoder written by ``epic export`` with LiteRT
(``ai_edge_litert.interpreter``), or with ``tflite_runtime.interpreter`` where LiteRT is not
installed, and turns one raw shot-gather of the device's receivers, ``(5, 1000, 14)`` float32
amplitudes, into the int8 latent the device publishes, ``(14, token_dim)``, with the scale and
zero point that dequantise it (``value = scale * (q - zero_point)``).

Normalisation is the training one (:func:`epic.data.transforms.normalize_data` with the
dataset's amplitude bounds). The input and output quantisation are read from the model,
never assumed: an encoder with an int8 input is fed the normalised gather quantised with the
model's input scale/zero point; one with a float32 input (``float_stem`` export) is fed the
normalised gather as it is.

Bad input never reaches the wire: a missing or corrupt model raises :class:`ModelFileError`,
a model whose input does not fit the device's receivers :class:`ModelShapeError`, and a gather
with NaN/Inf or of the wrong shape :class:`GatherError` (all :class:`~epic.errors.InputError`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from epic.data.transforms import normalize_data
from epic.errors import DataError, InputError

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

log = logging.getLogger(__name__)

BACKENDS = ("ai-edge-litert", "tflite-runtime")
"""Interpreter packages in order of preference."""


class ModelFileError(DataError):
    """The ``.tflite`` file (or its manifest) is missing, corrupt, or not an encoder."""


class ModelShapeError(InputError):
    """The model's input or output shape does not fit the device (receivers, shots, samples)."""


class GatherError(InputError):
    """A shot-gather that must not be encoded: wrong shape or dtype, NaN or Inf."""


class BackendUnavailableError(ImportError):
    """Neither ai-edge-litert nor tflite-runtime is installed."""


class Latent(NamedTuple):
    """One encoded gather: ``values`` ``(n_rx, token_dim)`` int8, dequantised as
    ``scale * (values - zero_point)``."""

    values: np.ndarray
    scale: float
    zero_point: int


def load_interpreter_class() -> tuple[type, str]:
    """``(Interpreter class, backend name)``: LiteRT, else tflite-runtime.

    Raises:
        BackendUnavailableError: neither package can be imported.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as litert_exc:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as tflite_exc:
            raise BackendUnavailableError(
                f"no TFLite interpreter: ai-edge-litert ({litert_exc}) and tflite-runtime "
                f"({tflite_exc}) are both missing; pip install ai-edge-litert==2.3.0") from None
        log.info("ai-edge-litert missing (%s); using tflite-runtime", litert_exc)
        return Interpreter, "tflite-runtime"
    return Interpreter, "ai-edge-litert"


class EncoderRuntime:
    """One device's encoder in a TFLite interpreter.

    Args:
        path: the ``.tflite`` file.
        num_threads: interpreter threads (>= 1).
        data_min, data_max: the dataset's raw amplitude bounds used in training (FlatVel-A:
            -26.95 and 52.77); :meth:`from_manifest` takes them from the export manifest.
        n_receivers: receivers this device records; the model's input must have as many.
        n_shots, n_samples: shots per gather and time samples per trace.

    Attributes:
        backend: ``"ai-edge-litert"`` or ``"tflite-runtime"``.
        input_dtype: ``np.int8`` or ``np.float32``; ``input_scale``/``input_zero_point`` are
            the model's input quantisation (0.0 and 0 for a float input).
        output_scale, output_zero_point: the latent's quantisation, from the model.
        latent_shape: ``(n_receivers, token_dim)``.

    Raises:
        ModelFileError: missing, unreadable or corrupt file, or not an int8-output encoder.
        ModelShapeError: the model's input is not ``(1, n_shots, n_samples, n_receivers)``.
        InputError: bad ``num_threads`` or normalisation bounds.
        BackendUnavailableError: no interpreter package.
    """

    def __init__(self, path: str | Path, num_threads: int = 1, *, data_min: float = -26.95,
                 data_max: float = 52.77, n_receivers: int = 14, n_shots: int = 5,
                 n_samples: int = 1000) -> None:
        self.path = Path(path)
        if not isinstance(num_threads, int) or num_threads < 1:
            raise InputError(f"num_threads must be an int >= 1, got {num_threads!r}")
        if not (np.isfinite(data_min) and np.isfinite(data_max) and data_max > data_min):
            raise InputError(f"need finite data_min < data_max, got {data_min!r}, {data_max!r}")
        self.data_min, self.data_max = float(data_min), float(data_max)
        self.num_threads = num_threads
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such model file")
        interpreter_cls, self.backend = load_interpreter_class()
        try:
            self._interpreter = interpreter_cls(model_path=str(self.path),
                                                num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # the interpreters raise these on bad bytes
            raise ModelFileError(f"{self.path}: not a valid .tflite model "
                                 f"({type(exc).__name__}: {str(exc).strip()[:200]})") from None
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{self.path}: {len(inputs)} inputs and {len(outputs)} "
                                 "outputs, an encoder has one of each")
        self._in, self._out = inputs[0], outputs[0]
        expected = (1, n_shots, n_samples, n_receivers)
        got = tuple(int(n) for n in self._in["shape"])
        if got != expected:
            raise ModelShapeError(f"{self.path}: model input shape {got} does not fit this "
                                  f"device's gather {expected} ({n_receivers} receivers)")
        self.gather_shape = expected[1:]
        out_shape = tuple(int(n) for n in self._out["shape"])
        if len(out_shape) != 3 or out_shape[:2] != (1, n_receivers):
            raise ModelShapeError(f"{self.path}: model output shape {out_shape}, expected "
                                  f"(1, {n_receivers}, token_dim)")
        self.latent_shape = out_shape[1:]
        self.input_dtype = self._in["dtype"]
        if self.input_dtype not in (np.int8, np.float32) or self._out["dtype"] != np.int8:
            raise ModelFileError(f"{self.path}: input {np.dtype(self.input_dtype).name}, output "
                                 f"{np.dtype(self._out['dtype']).name}; expected an int8 (or "
                                 "float32) input and an int8 output")
        self.input_scale, self.input_zero_point = _quantization(self._in)
        # normalisation buffer, reused by every encode (so one runtime serves one thread)
        self._work = np.empty(self.gather_shape, np.float32)
        self.output_scale, self.output_zero_point = _quantization(self._out)
        if self.input_dtype == np.int8 and self.input_scale <= 0:
            raise ModelFileError(f"{self.path}: int8 input without a quantisation scale")
        if self.output_scale <= 0:
            raise ModelFileError(f"{self.path}: int8 output without a quantisation scale")
        log.info("%s: %s backend, %d thread(s), input %s, latent %s int8 scale %.6g zp %d",
                 self.path, self.backend, num_threads, np.dtype(self.input_dtype).name,
                 self.latent_shape, self.output_scale, self.output_zero_point)

    @classmethod
    def from_manifest(cls, manifest_path: str | Path, device_id: int, num_threads: int = 1,
                      verify_sha256: bool = True) -> EncoderRuntime:
        """The encoder of ``device_id`` (1-based) listed in an ``epic export`` manifest,
        normalised with the manifest's constants; the file's sha256 is checked."""
        manifest_path = Path(manifest_path)
        try:
            manifest = json.loads(manifest_path.read_text())
            entry = next((e for e in manifest["devices"] if e["device_id"] == device_id), None)
            norm = manifest["normalisation"]
            data_min, data_max = float(norm["data_min"]), float(norm["data_max"])
            rx = manifest["rx_per_device"]
        except FileNotFoundError:
            raise ModelFileError(f"{manifest_path}: no such manifest") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{manifest_path}: not an encoder manifest "
                                 f"({type(exc).__name__}: {exc})") from None
        if entry is None:
            ids = [e.get("device_id") for e in manifest["devices"]]
            raise InputError(f"{manifest_path}: no encoder for device {device_id} (has {ids})")
        path = manifest_path.parent / entry["file"]
        if verify_sha256 and path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != entry["sha256"]:
                raise ModelFileError(f"{path}: sha256 {digest[:12]}... differs from the "
                                     f"manifest's {entry['sha256'][:12]}... (corrupt or replaced)")
        return cls(path, num_threads, data_min=data_min, data_max=data_max, n_receivers=rx)

    def check_gather(self, gather_raw: np.ndarray) -> np.ndarray:
        """Validate one raw gather; return it as float32 ``(5, 1000, n_rx)``.

        Raises:
            GatherError: wrong shape, non-numeric dtype, or any NaN/Inf sample.
        """
        gather = self._check_layout(gather_raw)
        finite = np.isfinite(gather)
        if not finite.all():
            bad = np.argwhere(~finite)
            shot, t, rx = (int(i) for i in bad[0])
            raise GatherError(f"gather has {len(bad)} non-finite sample(s) (NaN/Inf), first at "
                              f"shot {shot}, sample {t}, receiver {rx}: "
                              f"{gather[shot, t, rx]!r}; not encoded")
        return gather.astype(np.float32, copy=False)

    def _check_layout(self, gather_raw: np.ndarray) -> np.ndarray:
        gather = np.asarray(gather_raw)
        if gather.shape != self.gather_shape:
            raise GatherError(f"gather shape {gather.shape}, expected {self.gather_shape} "
                              f"for {self.path.name}")
        if not np.issubdtype(gather.dtype, np.floating):
            raise GatherError(f"gather dtype {gather.dtype}, expected float32 amplitudes")
        return gather

    def encode(self, gather_raw: np.ndarray) -> Latent:
        """Raw ``(5, 1000, n_rx)`` float32 amplitudes -> :class:`Latent` (int8 values
        ``(n_rx, token_dim)``, scale, zero point)."""
        gather = self._check_layout(gather_raw)
        x = normalize_data(gather, self.data_min, self.data_max, out=self._work)
        # NaN/Inf survive normalisation, so one sum of the (cache-hot) result finds them; the
        # full check then says where (a pass over the cold input cost as much as three)
        if not np.isfinite(x.sum(dtype=np.float32)):
            self.check_gather(gather)
            raise GatherError("gather normalises to non-finite values; not encoded")
        # the same float32 operations as ``clip(rint(x / scale) + zero_point)``, in place in
        # one reused buffer, written straight into the interpreter's input tensor (no
        # set_tensor copy): a fresh 280 KB array per step is a new mmap whose page faults
        # cost more than the arithmetic (~5-30 us a pass against a ~0.3 ms invoke)
        if self.input_dtype == np.int8:
            np.divide(x, np.float32(self.input_scale), out=x)
            np.rint(x, out=x)
            np.add(x, np.float32(self.input_zero_point), out=x)
            np.clip(x, -128, 127, out=x)
        np.copyto(self._interpreter.tensor(self._in["index"])()[0], x, casting="unsafe")
        self._interpreter.invoke()
        values = self._interpreter.get_tensor(self._out["index"])[0]
        return Latent(values, self.output_scale, self.output_zero_point)

    def io_spec(self, which: str) -> dict:
        """The model's ``"input"`` or ``"output"`` tensor as the export manifest records it:
        shape, dtype name, quantisation scale and zero point."""
        detail = {"input": self._in, "output": self._out}[which]
        scale, zero_point = _quantization(detail)
        return {"shape": [int(n) for n in detail["shape"]],
                "dtype": np.dtype(detail["dtype"]).name, "scale": scale,
                "zero_point": zero_point}

    @staticmethod
    def dequantize(latent: Latent) -> np.ndarray:
        """``(n_rx, token_dim)`` float32 latent values."""
        return (latent.values.astype(np.float32) - latent.zero_point) * np.float32(latent.scale)


def _quantization(detail: dict) -> tuple[float, int]:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero_point)
