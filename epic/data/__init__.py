"""The data layer: OpenFWI datasets, velocity-map families, forward modelling, replay.

Importing ``epic.data`` pulls in numpy only; torch and deepwave load when
:func:`forward_model` first runs.
"""

from epic.data.forward import OPENFWI_ACQUISITION, Acquisition, forward_model
from epic.data.openfwi import (
    DATASETS,
    DatasetSpec,
    OpenFWIDataset,
    find_shards,
    get_dataset,
    load_data,
    load_velocity,
    read_velocity_maps,
)
from epic.data.stream import GatherAssembler, SensorWindow, receiver_ranges, replay_gather
from epic.data.transforms import (
    denormalize_data,
    denormalize_velocity,
    normalize_data,
    normalize_velocity,
)

__all__ = [
    "DATASETS",
    "OPENFWI_ACQUISITION",
    "Acquisition",
    "DatasetSpec",
    "GatherAssembler",
    "OpenFWIDataset",
    "SensorWindow",
    "denormalize_data",
    "denormalize_velocity",
    "find_shards",
    "forward_model",
    "get_dataset",
    "load_data",
    "load_velocity",
    "normalize_data",
    "normalize_velocity",
    "read_velocity_maps",
    "receiver_ranges",
    "replay_gather",
]
