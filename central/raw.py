"""Raw mode (the centralized baseline): reassemble each device's chunks and run InversionNet.

Every device sends its ``(5, 1000, 14)`` float raw traces in chunks (``epic.wire.split_array``).
The assembler (`central.assembler`) collects, de-duplicates and checks them; here each present
device's chunks are joined once (``epic.wire.join_chunks``) and placed at its topology
receiver range ``[first, last)`` of a ``(5, 1000, 70)`` gather, with zeros (silent receivers)
where a device is absent. Central then normalises as OpenFWI with the checkpoint's dataset
constants, and runs InversionNet: ``(B, 5, 1000, 70)`` -> ``(B, 1, 70, 70)`` in [-1, 1], which
is returned in m/s. InversionNet runs in torch (a checkpoint) or torch-free on ONNX Runtime (an
``epic export-decoders`` manifest, :class:`epic.inference.RawDecoderRuntime`); torch is
imported only on the checkpoint path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from central.assembler import Gather
from epic.data.transforms import denormalize_velocity, normalize_data
from epic.errors import InputError
from epic.inference.decoders import RawDecoderRuntime, load_decoder_manifest
from epic.wire import join_chunks

__all__ = ["RAW_SHOTS", "RAW_TIME_SAMPLES", "RawDecoder", "assemble_raw"]

log = logging.getLogger(__name__)

RAW_SHOTS = 5
RAW_TIME_SAMPLES = 1000


def assemble_raw(gather: Gather, receivers: Mapping[int, tuple[int, int]],
                 n_rx: int = 70) -> np.ndarray:
    """The whole gather's raw traces, ``(5, 1000, n_rx)`` float32, zeros for absent devices.

    Args:
        gather: a closed raw gather; every present device has all its chunks, in order and
            agreeing on dtype and shape (`central.assembler.Assembler` saw to it).
        receivers: device id -> receiver range ``(first, last)``, last exclusive.
        n_rx: receivers of the whole line.
    """
    whole = np.zeros((RAW_SHOTS, RAW_TIME_SAMPLES, n_rx), np.float32)
    for device_id, parts in gather.devices.items():
        array = join_chunks(parts.frames)
        first, last = receivers[device_id]
        whole[:, :, first:last] = array.astype(np.float32)
    return whole


class RawDecoder:
    """InversionNet from a checkpoint (torch) or a decoder manifest (ONNX Runtime), or no
    model (gathers are assembled, no map is made).

    Args:
        checkpoint: an "inversionnet" checkpoint, or None.
        receivers: device id -> receiver range ``(first, last)`` from the topology.
        n_rx: receivers of the whole line (InversionNet takes 70).
        decoder: an ``epic export-decoders`` manifest; its "inversionnet" model, when it has
            one, is used in place of ``checkpoint``. threads: ONNX Runtime threads.
    """

    def __init__(self, checkpoint: Path | None, receivers: Mapping[int, tuple[int, int]],
                 n_rx: int = 70, *, decoder: Path | None = None, threads: int = 1) -> None:
        for device_id, (first, last) in receivers.items():
            if not 0 <= first < last <= n_rx:
                raise InputError(f"device-{device_id} receivers [{first}, {last}) outside "
                                 f"[0, {n_rx}) (raw decoder)")
        self.receivers = dict(receivers)
        self.n_rx = n_rx
        self.model = self.runtime = None
        if decoder is not None:
            if "inversionnet" in load_decoder_manifest(decoder).get("models", {}):
                self.runtime = RawDecoderRuntime(decoder, threads=threads)
                log.info("raw mode: InversionNet (onnxruntime) from %s", decoder)
            else:
                log.info("raw mode: %s has no InversionNet; raw gathers get no map", decoder)
        elif checkpoint is not None:
            from epic.data.openfwi import get_dataset
            from epic.models.checkpoint import load_checkpoint

            self.model, ckpt = load_checkpoint(checkpoint, expected_model="inversionnet")
            spec = get_dataset(ckpt["dataset"])
            self.data_min, self.data_max = spec.data_min, spec.data_max
            log.info("raw mode: InversionNet from %s (dataset %s)", checkpoint, spec.name)
        else:
            log.info("raw mode: no InversionNet checkpoint; raw gathers get no map")

    @property
    def available(self) -> bool:
        """Whether a model is loaded."""
        return self.model is not None or self.runtime is not None

    def decode(self, gathers: Sequence[Gather]) -> np.ndarray:
        """``len(gathers)`` maps, ``(B, 70, 70)`` float32 m/s. Needs a model."""
        if not self.available:
            raise InputError("raw decode without an InversionNet checkpoint")
        x = np.stack([assemble_raw(g, self.receivers, self.n_rx) for g in gathers])
        if self.runtime is not None:
            return self.runtime.decode(x)  # normalises with the manifest's constants
        import torch

        x = normalize_data(x, self.data_min, self.data_max)  # (B, 5, 1000, 70)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x)).numpy()  # (B, 1, 70, 70) in [-1, 1]
        return denormalize_velocity(y[:, 0])
