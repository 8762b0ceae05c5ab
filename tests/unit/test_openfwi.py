import zipfile

import numpy as np
import pytest

from epic.data.openfwi import (
    DATASETS,
    OpenFWIDataset,
    find_shards,
    get_dataset,
    load_data,
    load_velocity,
    read_velocity_maps,
)
from epic.errors import DataError, InputError
from tests.conftest import requires_openfwi


def test_registry_has_the_ten_datasets_with_published_constants():
    assert sorted(DATASETS) == sorted(
        f"{f}-{v}" for f in ("flatvel", "curvevel", "flatfault", "curvefault", "style")
        for v in "ab"
    )
    assert (DATASETS["flatvel-a"].data_min, DATASETS["flatvel-a"].data_max) == (-26.95, 52.77)
    assert (DATASETS["style-b"].data_min, DATASETS["style-b"].data_max) == (-23.76, 46.01)
    assert DATASETS["curvefault-a"].data_prefix == "seis"
    assert DATASETS["curvefault-a"].model_prefix == "vel"
    assert DATASETS["curvevel-b"].model_prefix == "model"
    for spec in DATASETS.values():
        assert (spec.velocity_min_mps, spec.velocity_max_mps) == (1500.0, 4500.0)
        assert spec.data_min < 0 < spec.data_max


def test_get_dataset_accepts_openfwi_spellings_and_rejects_unknown():
    assert get_dataset("FlatVel_A") is DATASETS["flatvel-a"]
    assert get_dataset("CurveFault-B").name == "curvefault-b"
    with pytest.raises(InputError, match="unknown dataset 'flatvel-c'"):
        get_dataset("flatvel-c")


def _save(path, array):
    np.save(path, array)
    return path


def test_loader_memory_maps_and_validates(tmp_path):
    path = _save(tmp_path / "data1.npy", np.zeros((2, 5, 1000, 70), np.float32))
    data = load_data(path)
    assert isinstance(data, np.memmap) and data.shape == (2, 5, 1000, 70)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 5, 1000, 69), np.float32), r"shape is \(2, 5, 1000, 69\)"),
        (np.zeros((2, 5, 1000, 70), np.float64), "dtype is float64"),
        (np.zeros((0, 5, 1000, 70), np.float32), "no samples"),
    ],
)
def test_loader_rejects_bad_arrays_naming_the_file(tmp_path, array, message):
    path = _save(tmp_path / "data1.npy", array)
    with pytest.raises(DataError, match=message) as info:
        load_data(path)
    assert str(path) in str(info.value)


def test_loader_finds_nan_and_names_the_sample(tmp_path):
    array = np.zeros((70, 1, 70, 70), np.float32)
    array[66, 0, 3, 4] = np.inf
    path = _save(tmp_path / "model1.npy", array)
    with pytest.raises(DataError, match="sample 66 contains NaN or Inf"):
        load_velocity(path)


def test_loader_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "data9.npy")
    (tmp_path / "data1.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a readable .npy"):
        load_data(tmp_path / "data1.npy")


def test_read_velocity_maps_from_zip_in_natural_order(tmp_path, velocity_npy):
    maps = np.load(velocity_npy)
    archive = tmp_path / "maps.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("vmodel10.npy", _npy_bytes(maps[2:]))
        z.writestr("vmodel2.npy", _npy_bytes(maps[:2]))
        z.writestr("README.txt", "ignored")
    out = read_velocity_maps(archive)
    assert np.array_equal(out, maps)
    assert np.array_equal(read_velocity_maps(archive, limit=1), maps[:1])


def _npy_bytes(array):
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_zip_without_npy_and_non_zip_are_rejected(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("notes.txt", "nothing here")
    with pytest.raises(DataError, match="holds no .npy files"):
        read_velocity_maps(archive)
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"PK but not really")
    with pytest.raises(DataError, match="not a readable zip"):
        read_velocity_maps(bogus)
    other = tmp_path / "maps.tar"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="expected a .npy or a .zip"):
        read_velocity_maps(other)


def test_find_shards_pairs_both_namings_and_dataset_spans_shards(tmp_path):
    rng = np.random.default_rng(0)
    for k, n in ((1, 2), (2, 3)):
        _save(tmp_path / f"seis{k}.npy", rng.normal(size=(n, 5, 1000, 70)).astype(np.float32))
        _save(tmp_path / f"vel{k}.npy", np.full((n, 1, 70, 70), 1500.0 + k, np.float32))
    pairs = find_shards(tmp_path)
    assert [p.data_path.name for p in pairs] == ["seis1.npy", "seis2.npy"]
    ds = OpenFWIDataset(tmp_path)
    assert len(ds) == 5
    data, velocity = ds[3]
    assert np.array_equal(data, np.load(tmp_path / "seis2.npy")[1])
    assert velocity[0, 0, 0] == 1502.0
    with pytest.raises(IndexError, match="sample 5 out of range"):
        ds[5]


def test_find_shards_errors(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        find_shards(tmp_path / "missing")
    with pytest.raises(DataError, match="no OpenFWI shards"):
        find_shards(tmp_path)
    _save(tmp_path / "data1.npy", np.zeros((1, 5, 1000, 70), np.float32))
    with pytest.raises(DataError, match="no velocity shard model1.npy"):
        find_shards(tmp_path)
    assert find_shards(tmp_path, require_models=False)[0].model_path is None


def test_dataset_rejects_mismatched_counts(tmp_path):
    _save(tmp_path / "data1.npy", np.zeros((2, 5, 1000, 70), np.float32))
    _save(tmp_path / "model1.npy", np.full((3, 1, 70, 70), 2000.0, np.float32))
    with pytest.raises(DataError, match="3 maps, but data1.npy has 2 gathers"):
        OpenFWIDataset(tmp_path)


@requires_openfwi
def test_real_flatvel_a_maps_load(openfwi_dir):
    maps = read_velocity_maps(openfwi_dir / "FlatVelA_test.zip", limit=600)
    assert maps.shape == (600, 1, 70, 70)
    assert 1500.0 <= maps.min() and maps.max() <= 4500.0


def test_mean_map_mae_is_the_test_error_of_the_training_mean(tmp_path):
    from epic.data.normalized import mean_map_mae

    def split(name: str, velocities_mps: list[float]):
        d = tmp_path / name
        d.mkdir()
        n = len(velocities_mps)
        np.save(d / "data1.npy", np.zeros((n, 5, 1000, 70), np.float32))
        maps = np.ones((n, 1, 70, 70), np.float32) * np.array(velocities_mps, np.float32)[
            :, None, None, None]
        np.save(d / "model1.npy", maps)
        return d

    # FlatVel-A normalises 1500..4500 m/s to [-1, 1]: 1,500 m/s is 1.0 normalised
    train, test = split("train", [2000.0, 3000.0]), split("test", [4000.0])
    assert mean_map_mae(train, test, "flatvel-a") == pytest.approx(1500 / 1500)
    with pytest.raises(DataError, match="no such directory"):
        mean_map_mae(train, tmp_path / "absent", "flatvel-a")
