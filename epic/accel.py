"""Where torch work runs: ``--device cpu`` or ``--device cuda[:N]``, checked at the boundary."""

from __future__ import annotations

import re

from epic.errors import InputError

__all__ = ["check_device"]

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """Return ``device`` if torch can use it here; else raise :class:`InputError` naming it.

    Accepts ``cpu``, ``cuda`` and ``cuda:N``. A CUDA device is checked against
    ``torch.cuda.device_count()``, so a machine without an accelerator gets one clear line
    instead of a CUDA traceback half-way through a job.
    """
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    if device == "cpu":
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= count:
        raise InputError(f"--device {device}: this machine has "
                         f"{count or 'no'} CUDA device{'s' if count != 1 else ''}")
    return device
