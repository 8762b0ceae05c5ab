"""The OpenFWI datasets: a registry of their published constants, and a validating shard loader.

OpenFWI (Deng et al., NeurIPS 2022 Datasets and Benchmarks) stores each dataset as shards of
500 samples: seismic data ``(N, 5, 1000, 70)`` float32 (shots, time samples at 1 ms, receivers
at every 10 m) and velocity maps ``(N, 1, 70, 70)`` float32 in m/s (depth z, then x). The
Vel and Style families name them ``data<k>.npy`` / ``model<k>.npy``, the Fault families
``seis<k>.npy`` / ``vel<k>.npy``. The amplitude bounds below are verbatim from OpenFWI's
``dataset_config.json``; they set the data normalisation (see :mod:`epic.data.transforms`).
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epic.errors import DataError, InputError

__all__ = [
    "DATASETS",
    "DATA_SHAPE",
    "MODEL_SHAPE",
    "DatasetSpec",
    "OpenFWIDataset",
    "ShardPair",
    "check_array",
    "find_shards",
    "get_dataset",
    "load_data",
    "load_velocity",
    "read_velocity_maps",
]

DATA_SHAPE = (5, 1000, 70)
"""One shot-gather: (shots, time samples, receivers)."""
MODEL_SHAPE = (1, 70, 70)
"""One velocity map: (channel, depth z, horizontal x)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One OpenFWI dataset and its published constants.

    Attributes:
        name: registry key, lower case with a dash (``"flatvel-a"``).
        title: OpenFWI's spelling (``"FlatVel-A"``).
        family: ``flatvel``, ``curvevel``, ``flatfault``, ``curvefault`` or ``style``.
        data_min, data_max: raw amplitude bounds over the whole dataset (OpenFWI's constants).
        velocity_min_mps, velocity_max_mps: velocity normalisation range in m/s.
        data_prefix, model_prefix: shard file name prefixes (``data``/``model``, or
            ``seis``/``vel`` for the fault families).
        file_size: samples per shard in OpenFWI's release.
    """

    name: str
    title: str
    family: str
    data_min: float
    data_max: float
    velocity_min_mps: float = 1500.0
    velocity_max_mps: float = 4500.0
    data_prefix: str = "data"
    model_prefix: str = "model"
    file_size: int = 500


def _spec(title: str, data_min: float, data_max: float) -> DatasetSpec:
    family = title.split("-")[0].lower()
    fault = "fault" in family
    return DatasetSpec(
        name=title.lower(),
        title=title,
        family=family,
        data_min=data_min,
        data_max=data_max,
        data_prefix="seis" if fault else "data",
        model_prefix="vel" if fault else "model",
    )


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        _spec("FlatVel-A", -26.95, 52.77),
        _spec("FlatVel-B", -27.17, 56.05),
        _spec("CurveVel-A", -27.11, 55.10),
        _spec("CurveVel-B", -29.04, 57.03),
        _spec("FlatFault-A", -26.10, 50.86),
        _spec("FlatFault-B", -24.86, 50.28),
        _spec("CurveFault-A", -26.48, 52.32),
        _spec("CurveFault-B", -24.93, 50.98),
        _spec("Style-A", -24.96, 48.93),
        _spec("Style-B", -23.76, 46.01),
    )
}
"""The 10 OpenFWI 2-D datasets, keyed by lower-case name."""


def get_dataset(name: str) -> DatasetSpec:
    """Look up a dataset by name; case, ``_`` and ``-`` are ignored (``FlatVel_A`` works)."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for spec in DATASETS.values():
        if spec.name.replace("-", "") == key:
            return spec
    raise InputError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def check_array(array: np.ndarray, item_shape: tuple[int, ...], source: str,
                check_finite: bool = True) -> None:
    """Check that ``array`` is float32 of shape ``(N, *item_shape)``, N >= 1, all finite
    (with ``check_finite=False`` no sample is read: dtype, shape and N only).

    Raises:
        DataError: naming ``source`` and the problem. Finiteness is checked in chunks, so a
            memory-mapped file is never loaded whole.
    """
    if array.dtype != np.float32:
        raise DataError(f"{source}: dtype is {array.dtype}, expected float32")
    if array.ndim != len(item_shape) + 1 or tuple(array.shape[1:]) != item_shape:
        expected = ", ".join(map(str, item_shape))
        raise DataError(f"{source}: shape is {tuple(array.shape)}, expected (N, {expected})")
    if array.shape[0] == 0:
        raise DataError(f"{source}: holds no samples (N = 0)")
    for start in range(0, array.shape[0] if check_finite else 0, 64):
        chunk = np.asarray(array[start : start + 64])
        if not np.isfinite(chunk).all():
            bad = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
            raise DataError(f"{source}: sample {bad} contains NaN or Inf")


_NPY_MAGIC = b"\x93NUMPY"


def _check_npy_magic(head: bytes, source: str) -> None:
    """A .npy starts with ``\\x93NUMPY``; without it numpy would call the bytes pickled data."""
    if not head.startswith(_NPY_MAGIC):
        raise DataError(f"{source}: not a readable .npy file (it does not start with the "
                        f"\\x93NUMPY magic; its first bytes are {head[:8]!r})")


def _load_npy(path: Path, item_shape: tuple[int, ...], mmap: bool,
              check_finite: bool = True) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open("rb") as fh:
            _check_npy_magic(fh.read(8), str(path))
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc})") from None
    # check_finite=False: dtype and shape only; the caller checks each sample it reads
    check_array(array, item_shape, str(path), check_finite=check_finite)
    return array


def load_data(path: str | Path, mmap: bool = True, check_finite: bool = True) -> np.ndarray:
    """Load a seismic shard, ``(N, 5, 1000, 70)`` float32, memory-mapped by default; with
    ``check_finite=False`` the shard is not scanned for NaN/Inf (the caller checks what it
    reads)."""
    return _load_npy(Path(path), DATA_SHAPE, mmap, check_finite)


def load_velocity(path: str | Path, mmap: bool = True, check_finite: bool = True) -> np.ndarray:
    """Load a velocity shard, ``(N, 1, 70, 70)`` float32 in m/s, memory-mapped by default."""
    return _load_npy(Path(path), MODEL_SHAPE, mmap, check_finite)


def read_velocity_maps(path: str | Path, limit: int | None = None) -> np.ndarray:
    """Read velocity maps from an OpenFWI ``.npy`` or a ``.zip`` of them, in name order.

    Args:
        path: a ``(N, 1, 70, 70)`` float32 ``.npy`` or a zip of such files (for example
            ``../shared/openfwi/FlatVelA_test.zip``).
        limit: keep only the first ``limit`` maps (reads no more members than needed).

    Returns:
        ``(M, 1, 70, 70)`` float32 velocities in m/s.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".npy":
        maps = np.asarray(load_velocity(path)[:limit])
        return maps
    if path.suffix != ".zip":
        raise DataError(f"{path}: expected a .npy or a .zip of .npy files")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip ({exc})") from None
    with archive:
        members = sorted(
            (n for n in archive.namelist() if n.endswith(".npy")), key=_natural_key
        )
        if not members:
            raise DataError(f"{path}: the zip holds no .npy files")
        parts: list[np.ndarray] = []
        total = 0
        for member in members:
            source = f"{path}:{member}"
            try:
                raw = archive.read(member)
                _check_npy_magic(raw[:8], source)
                array = np.load(io.BytesIO(raw), allow_pickle=False)
            except DataError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{source}: not a readable .npy ({exc})") from None
            check_array(array, MODEL_SHAPE, source)
            parts.append(array)
            total += len(array)
            if limit is not None and total >= limit:
                break
    return np.concatenate(parts)[:limit]


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class ShardPair:
    """A seismic shard and its velocity shard (same suffix, e.g. ``data3.npy``/``model3.npy``)."""

    data_path: Path
    model_path: Path | None


_SHARD_RE = re.compile(r"^(data|seis)(.*)\.npy$")


def find_shards(directory: str | Path, require_models: bool = True) -> list[ShardPair]:
    """Find the OpenFWI shards in ``directory``, in natural order of their suffix.

    Accepts both namings (``data*``/``model*`` and ``seis*``/``vel*``).

    Raises:
        DataError: when the directory is missing, holds no seismic shard, or (with
            ``require_models``) a seismic shard has no velocity partner.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    pairs = []
    for path in sorted(directory.glob("*.npy"), key=lambda p: _natural_key(p.name)):
        match = _SHARD_RE.match(path.name)
        if not match:
            continue
        prefix, suffix = match.groups()
        model = directory / f"{'model' if prefix == 'data' else 'vel'}{suffix}.npy"
        if not model.is_file():
            if require_models:
                raise DataError(f"{path}: no velocity shard {model.name} beside it")
            model = None
        pairs.append(ShardPair(path, model))
    if not pairs:
        raise DataError(f"{directory}: no OpenFWI shards (data*.npy or seis*.npy)")
    return pairs


class OpenFWIDataset:
    """All samples of an OpenFWI-layout directory, memory-mapped and validated on open.

    ``dataset[i]`` gives ``(data, velocity)``: raw ``(5, 1000, 70)`` float32 amplitudes and
    ``(1, 70, 70)`` float32 m/s (velocity is None where the directory has no model shards and
    ``require_models`` is False). With ``check_finite=False`` the shards are not scanned for
    NaN/Inf on open (a reader that checks every sample it takes, like the device agent, skips
    reading each shard whole).
    """

    def __init__(self, directory: str | Path, require_models: bool = True,
                 check_finite: bool = True) -> None:
        self.directory = Path(directory)
        self._data: list[np.ndarray] = []
        self._models: list[np.ndarray | None] = []
        for pair in find_shards(self.directory, require_models):
            data = load_data(pair.data_path, check_finite=check_finite)
            model = (load_velocity(pair.model_path, check_finite=check_finite)
                     if pair.model_path else None)
            if model is not None and len(model) != len(data):
                raise DataError(
                    f"{pair.model_path}: {len(model)} maps, but {pair.data_path.name} "
                    f"has {len(data)} gathers"
                )
            self._data.append(data)
            self._models.append(model)
        self._offsets = np.cumsum([0] + [len(d) for d in self._data])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} in {self.directory}")
        index %= len(self)
        shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return shard, index - int(self._offsets[shard])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        shard, local = self._locate(index)
        model = self._models[shard]
        return (
            np.asarray(self._data[shard][local]),
            None if model is None else np.asarray(model[local]),
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for i in range(len(self)):
            yield self[i]

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All samples loaded into memory: ``(N, 5, 1000, 70)`` and ``(N, 1, 70, 70)``."""
        data = np.concatenate([np.asarray(d) for d in self._data])
        if any(m is None for m in self._models):
            return data, None
        return data, np.concatenate([np.asarray(m) for m in self._models])
