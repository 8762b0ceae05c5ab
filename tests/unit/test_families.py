import re
import time

import numpy as np
import pytest

from epic.data import families
from epic.data.families import FAMILY_NAMES, GENERATORS, GRID_SHAPE, generate

LAYERED = [name for name in FAMILY_NAMES if not name.startswith("style")]
FAULTED = [name for name in FAMILY_NAMES if "fault" in name]


@pytest.fixture(scope="module")
def batches() -> dict[str, np.ndarray]:
    """200 maps (200, 70, 70) of every family, seed 7."""
    return {name: generate(name, 200, 7)[:, 0] for name in FAMILY_NAMES}


def distinct_counts(maps: np.ndarray) -> np.ndarray:
    return np.array([len(np.unique(m)) for m in maps])


def test_constants_and_lookup_table_cover_the_ten_families():
    assert FAMILY_NAMES == (
        "flatvel-a", "flatvel-b", "curvevel-a", "curvevel-b", "flatfault-a",
        "flatfault-b", "curvefault-a", "curvefault-b", "style-a", "style-b",
    )  # fmt: skip
    assert tuple(GENERATORS) == FAMILY_NAMES
    assert GRID_SHAPE == (70, 70)
    assert (families.VELOCITY_MIN_MPS, families.VELOCITY_MAX_MPS) == (1500.0, 4500.0)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_shape_dtype_range_and_finite(name, batches):
    maps = generate(name, 4, 0)
    assert maps.shape == (4, 1, 70, 70)
    assert maps.dtype == np.float32
    every = batches[name]
    assert np.all(np.isfinite(every))
    assert every.min() >= 1500.0
    assert every.max() <= 4500.0
    one = GENERATORS[name](np.random.default_rng(3))
    assert one.shape == GRID_SHAPE
    assert one.dtype == np.float32


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_same_seed_same_maps_other_seed_other_maps(name):
    first = generate(name, 5, 123)
    np.testing.assert_array_equal(first, generate(name, 5, 123))
    assert not np.array_equal(first, generate(name, 5, 124))
    # map i depends only on (seed, i): a longer request starts with the shorter one
    np.testing.assert_array_equal(first, generate(name, 9, 123)[:5])
    # the maps of one batch are not copies of each other
    assert len({m.tobytes() for m in first}) == 5


def test_same_seed_in_two_families_does_not_share_draws():
    flat, faulted = generate("flatvel-a", 50, 1), generate("flatfault-a", 50, 1)
    assert not np.array_equal(distinct_counts(flat[:, 0]), distinct_counts(faulted[:, 0]))


@pytest.mark.parametrize("name", LAYERED)
def test_layered_maps_have_integer_velocities_like_openfwi(name, batches):
    maps = batches[name]
    np.testing.assert_array_equal(maps, np.round(maps))
    assert distinct_counts(maps).min() >= 2


@pytest.mark.parametrize("name", ["flatvel-a", "curvevel-a"])
def test_vel_a_velocity_never_decreases_with_depth(name, batches):
    assert np.all(np.diff(batches[name], axis=1) >= 0)


def test_b_variants_are_not_all_sorted_by_depth(batches):
    for name in ("flatvel-b", "curvevel-b"):
        decreasing = np.any(np.diff(batches[name], axis=1) < 0, axis=(1, 2))
        assert decreasing.mean() > 0.5, name


@pytest.mark.parametrize("name", ["flatvel-a", "flatvel-b"])
def test_flat_layers_are_constant_along_x(name, batches):
    maps = batches[name]
    assert np.all(maps == maps[:, :, :1])


@pytest.mark.parametrize("name", ["curvevel-a", "curvevel-b", "curvefault-a", "curvefault-b"])
def test_curved_layers_vary_along_x(name, batches):
    varies = np.any(np.diff(batches[name], axis=2) != 0, axis=(1, 2))
    assert varies.mean() > 0.95


@pytest.mark.parametrize("name", FAULTED)
def test_every_fault_map_has_a_lateral_discontinuity(name, batches):
    for vmap in batches[name]:
        jumps = np.abs(np.diff(vmap, axis=1))  # along x, row by row
        assert jumps.max() > 0, "no row changes along x: no fault"


@pytest.mark.parametrize("variant", ["a", "b"])
def test_flatfault_offsets_layers_across_a_dipping_line(variant, batches):
    # A fault shifts layers: the leftmost and rightmost columns differ, yet away from the
    # fault(s) each side keeps flat layers (so most rows change at few places along x).
    maps = batches[f"flatfault-{variant}"]
    differ = np.any(maps[:, :, 0] != maps[:, :, -1], axis=1)
    assert differ.mean() > 0.8
    changes_per_row = np.count_nonzero(np.diff(maps, axis=2), axis=2)
    assert np.median(changes_per_row) <= 2


def test_flatvel_a_distinct_velocities_match_real_openfwi():
    # Real FlatVel-A (the 5000 train maps, ../shared/openfwi/FlatVelA_train.zip) has 2..8
    # distinct velocities per map, mean 5.44, 10.5 % with 3 and 8.2 % with 8 (2 in 3 maps of
    # 5000); measured with bench/family_gallery.py --stats, see docs/data.md.
    counts = distinct_counts(generate("flatvel-a", 1000, 2024)[:, 0])
    assert counts.min() >= 2
    assert counts.max() <= 8
    assert abs(counts.mean() - 5.44) < 0.15
    share = np.bincount(counts, minlength=9) / counts.size
    assert np.all(share[3:9] > 0.04)


def test_curvevel_a_distinct_velocities_match_real_openfwi():
    # Real CurveVel-A (5000 train maps): 3..8 distinct velocities, mean 6.00, 4..8 about
    # equally often (0.1 % with 3).
    counts = distinct_counts(generate("curvevel-a", 1000, 2024)[:, 0])
    assert counts.min() >= 3
    assert counts.max() <= 8
    assert abs(counts.mean() - 6.0) < 0.15


def test_vel_a_layers_are_at_least_nine_cells_thick(batches):
    # Real FlatVel-A: interior layers (between two interfaces) are >= 9 cells thick.
    for column in batches["flatvel-a"][:, :, 0]:
        tops = np.flatnonzero(np.diff(column)) + 1
        assert np.all(np.diff(tops) >= 9)


def test_b_layers_are_at_least_five_cells_thick(batches):
    for column in batches["flatvel-b"][:, :, 0]:
        tops = np.flatnonzero(np.diff(column)) + 1
        assert np.all(np.diff(tops) >= 5)


def test_style_a_is_smoother_than_style_b(batches):
    def roughness(maps: np.ndarray) -> float:
        down, across = np.diff(maps, axis=1), np.diff(maps, axis=2)
        return float(np.mean(np.abs(down)) + np.mean(np.abs(across)))

    assert roughness(batches["style-a"]) < 0.7 * roughness(batches["style-b"])
    # not layered: many velocities per map
    assert distinct_counts(batches["style-a"]).min() > 50


@pytest.mark.benchmark
def test_generation_is_fast():
    start = time.perf_counter()
    for name in FAMILY_NAMES:
        generate(name, 100, 0)
    assert time.perf_counter() - start < 5.0  # 1000 maps in all


def test_accepts_numpy_integers():
    np.testing.assert_array_equal(
        generate("style-a", np.int64(2), np.int32(5)), generate("style-a", 2, 5)
    )


@pytest.mark.parametrize("dataset", ["FlatVel-A", "flatvel", "marmousi", "", None, ["style-a"]])
def test_unknown_dataset_is_rejected(dataset):
    with pytest.raises(
        ValueError, match=re.escape(f"unknown dataset {dataset!r}; expected one of")
    ):
        generate(dataset, 1, 0)


@pytest.mark.parametrize("count", [0, -3, 2.0, "3", True, None])
def test_bad_count_is_rejected(count):
    with pytest.raises(ValueError, match=re.escape(f"count must be an int >= 1, got {count!r}")):
        generate("flatvel-a", count, 0)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, False])
def test_bad_seed_is_rejected(seed):
    with pytest.raises(ValueError, match=re.escape(f"seed must be an int >= 0, got {seed!r}")):
        generate("flatvel-a", 1, seed)
