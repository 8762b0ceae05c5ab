"""Central's torch-free decoders: the EPIC decoder and InversionNet on ONNX Runtime.

``epic export-decoders`` (:mod:`epic.export_decoders`, the torch side) writes one ``.onnx``
graph per model and a ``manifest.json`` (format ``epic-decoders/1``). A graph holds no copy of
the trained weights: each of its weight tensors is an ONNX *external* initializer, a byte
range (offset, length) of the shipped checkpoint (``artifacts/*.pt``, a zip whose entries are
stored uncompressed), turned into float32 in the graph: float16 by a Cast, int8 codes by a
DequantizeLinear with their per-output-channel float32 scales (also in the checkpoint). So
the converted models add about 0.1 MB to the repository instead of 3 MB (EPIC decoder) and
24 to 98 MB (InversionNet), and they compute with exactly the float32 weights torch loads.
ONNX Runtime folds the casts and dequantisations into float32 constants at load
(:func:`ort_session` lets it fold DequantizeLinear too).

Here, with numpy and ``onnxruntime`` only:

- :class:`LatentDecoderRuntime`: dequantised tokens ``(B, n_devices, k, token_dim)`` float32
  and the presence mask ``(B, n_devices)`` bool -> ``(B, 70, 70)`` velocity in m/s (absent
  devices masked, as in :meth:`epic.models.epic.EPICModel.decode`).
- :class:`RawDecoderRuntime`: raw gathers ``(B, 5, 1000, 70)`` float32 amplitudes ->
  ``(B, 70, 70)`` m/s (OpenFWI normalisation with the manifest's constants, then InversionNet).

Both have a dynamic batch dimension. Loading checks the sha256 of the graph and of the weights
file against the manifest (the byte offsets are only valid for that exact checkpoint): a
missing, replaced or corrupt file raises :class:`~epic.inference.encoder.ModelFileError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from epic.data.transforms import denormalize_velocity, normalize_data
from epic.errors import InputError
from epic.inference.encoder import ModelFileError, ModelShapeError

__all__ = [
    "MANIFEST_FORMAT",
    "LatentDecoderRuntime",
    "OrtUnavailableError",
    "RawDecoderRuntime",
    "load_decoder_manifest",
    "ort_session",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "epic-decoders/1"
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
DISABLE_QDQ_KEY = "session.disable_quant_qdq"
"""ONNX Runtime keeps DequantizeLinear out of constant folding unless its QDQ fusions are off;
the decoder graphs dequantise constant weights only (no quantised activations), so folding
them at load gives float32 weights once instead of per run (InversionNet with int8 weights:
88 ms a gather at batch 1 unfolded, 48 ms folded, as with float16 weights)."""


class OrtUnavailableError(ImportError):
    """onnxruntime is not installed."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None, what: str) -> None:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such {what}")
    if expected is not None:
        digest = _sha256(path)
        if digest != expected:
            raise ModelFileError(f"{path}: sha256 {digest[:12]}... differs from the manifest's "
                                 f"{expected[:12]}... (corrupt or replaced {what})")


def ort_session(onnx_path: str | Path, weights_dir: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session for ``onnx_path`` whose external initializers are read from
    files in ``weights_dir`` (the checkpoint's folder).

    The graph is passed as bytes with ``weights_dir`` as the external-data folder, so the
    graph and the checkpoint may live in different folders. QDQ fusions are off
    (:data:`DISABLE_QDQ_KEY`) so that int8 weights are dequantised once, at load.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OrtUnavailableError(f"onnxruntime is not installed ({exc}); "
                                  "pip install onnxruntime==1.30.0") from None
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be an int >= 1, got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no constant-folding chatter
    options.add_session_config_entry(EXTERNAL_FOLDER_KEY, str(Path(weights_dir)))
    options.add_session_config_entry(DISABLE_QDQ_KEY, "1")  # fold weight DequantizeLinear
    try:
        return ort.InferenceSession(Path(onnx_path).read_bytes(), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelFileError(f"{onnx_path}: onnxruntime cannot load it "
                             f"({type(exc).__name__}: {str(exc).strip()[:300]})") from None


def load_decoder_manifest(manifest_path: str | Path) -> dict:
    """The parsed ``epic-decoders/1`` manifest.

    Raises:
        ModelFileError: missing, unreadable, or not a decoder manifest.
    """
    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{manifest_path}: no such decoder manifest") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{manifest_path}: not a decoder manifest "
                             f"({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{manifest_path}: not a decoder manifest (expected format "
                             f"{MANIFEST_FORMAT!r})")
    return manifest


class _OrtModel:
    """One model entry of a decoder manifest in an ONNX Runtime session."""

    kind = ""

    def __init__(self, manifest_path: str | Path, threads: int = 1,
                 verify_sha256: bool = True) -> None:
        self.manifest_path = Path(manifest_path)
        self.manifest = load_decoder_manifest(self.manifest_path)
        entry = self.manifest.get("models", {}).get(self.kind)
        if entry is None:
            raise ModelFileError(f"{self.manifest_path}: no {self.kind!r} model (has "
                                 f"{sorted(self.manifest.get('models', {}))})")
        try:
            self.entry = entry
            self.path = self.manifest_path.parent / entry["file"]
            self.weights_path = self.manifest_path.parent / entry["weights"]["file"]
            graph_sha, weights_sha = entry["sha256"], entry["weights"]["sha256"]
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"{self.manifest_path}: {self.kind!r} entry lacks {exc}"
                                 ) from None
        _check_sha256(self.path, graph_sha if verify_sha256 else None, "ONNX graph")
        _check_sha256(self.weights_path, weights_sha if verify_sha256 else None,
                      "weights file (checkpoint)")
        self.threads = threads
        self.session = ort_session(self.path, self.weights_path.parent, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        log.info("%s decoder: %s (weights %s), onnxruntime, %d thread(s)", self.kind,
                 self.path, self.weights_path, threads)

    def _run(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.input_names, arrays, strict=True))
        return self.session.run([self.output_name], feeds)[0]


class LatentDecoderRuntime(_OrtModel):
    """The EPIC decoder of a decoder manifest.

    Args:
        manifest_path: ``manifest.json`` written by ``epic export-decoders``.
        threads: ONNX Runtime intra-op threads (>= 1).

    Attributes:
        n_devices, rx_per_device, token_dim: the model's token layout;
        latent_shape: ``(rx_per_device, token_dim)``.
    """

    kind = "epic"

    def __init__(self, manifest_path: str | Path, threads: int = 1,
                 verify_sha256: bool = True) -> None:
        super().__init__(manifest_path, threads, verify_sha256)
        try:
            self.n_devices = int(self.entry["n_devices"])
            self.rx_per_device = int(self.entry["rx_per_device"])
            self.token_dim = int(self.entry["token_dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{self.manifest_path}: epic entry lacks {exc}") from None
        self.latent_shape = (self.rx_per_device, self.token_dim)

    def decode_normalised(self, tokens: np.ndarray, present: np.ndarray) -> np.ndarray:
        """``tokens (B, n_devices, k, token_dim)`` float32 + ``present (B, n_devices)`` bool
        -> ``(B, 1, 70, 70)`` normalised velocity in [-1, 1]."""
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)
        present = np.ascontiguousarray(present, dtype=bool)
        expected = (self.n_devices, *self.latent_shape)
        if tokens.ndim != 4 or tokens.shape[1:] != expected:
            raise ModelShapeError(f"tokens shape {tokens.shape}, expected (B, {expected})")
        if present.shape != tokens.shape[:2]:
            raise ModelShapeError(f"present shape {present.shape}, expected "
                                  f"{tokens.shape[:2]}")
        return self._run(tokens, present)

    def decode(self, tokens: np.ndarray, present: np.ndarray) -> np.ndarray:
        """``(B, 70, 70)`` float32 velocity in m/s."""
        return denormalize_velocity(self.decode_normalised(tokens, present)[:, 0])


class RawDecoderRuntime(_OrtModel):
    """InversionNet of a decoder manifest (raw mode, the centralized baseline).

    Attributes:
        data_min, data_max: the dataset's raw amplitude bounds (normalisation).
        gather_shape: ``(5, 1000, 70)``.
    """

    kind = "inversionnet"

    def __init__(self, manifest_path: str | Path, threads: int = 1,
                 verify_sha256: bool = True) -> None:
        super().__init__(manifest_path, threads, verify_sha256)
        try:
            norm = self.manifest["normalisation"]
            self.data_min, self.data_max = float(norm["data_min"]), float(norm["data_max"])
            self.gather_shape = tuple(int(n) for n in self.entry["gather_shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{self.manifest_path}: inversionnet entry lacks {exc}"
                                 ) from None

    def decode_normalised(self, x: np.ndarray) -> np.ndarray:
        """Normalised gathers ``(B, 5, 1000, 70)`` -> ``(B, 1, 70, 70)`` in [-1, 1]."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != self.gather_shape:
            raise ModelShapeError(f"gathers shape {x.shape}, expected (B, {self.gather_shape})")
        return self._run(x)

    def decode(self, gathers_raw: np.ndarray) -> np.ndarray:
        """Raw amplitudes ``(B, 5, 1000, 70)`` -> ``(B, 70, 70)`` float32 m/s."""
        x = normalize_data(np.asarray(gathers_raw, np.float32), self.data_min, self.data_max)
        return denormalize_velocity(self.decode_normalised(x)[:, 0])
