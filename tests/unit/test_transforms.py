import numpy as np
import pytest

from epic.data.openfwi import DATASETS
from epic.data.transforms import (
    denormalize_data,
    denormalize_velocity,
    log_transform,
    normalize_data,
    normalize_velocity,
)


def test_data_bounds_map_to_minus_one_and_one():
    spec = DATASETS["flatvel-a"]
    out = normalize_data(np.array([spec.data_min, 0.0, spec.data_max]), spec.data_min,
                         spec.data_max)
    # OpenFWI: log1p(|x|)*sign(x), then min-max of the log-transformed bounds to [-1, 1]
    lo, hi = -np.log1p(26.95), np.log1p(52.77)
    assert out == pytest.approx([-1.0, (0 - lo) / (hi - lo) * 2 - 1, 1.0], abs=1e-6)
    assert out.dtype == np.float32


def test_data_round_trip():
    x = np.random.default_rng(0).normal(0, 5, size=(5, 1000, 14)).astype(np.float32)
    y = normalize_data(x, -26.95, 52.77)
    assert np.allclose(denormalize_data(y, -26.95, 52.77), x, rtol=1e-5, atol=1e-5)


def test_log_transform_is_odd():
    x = np.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    assert np.allclose(log_transform(x), -log_transform(-x))
    assert log_transform(np.e - 1) == pytest.approx(1.0)


def test_velocity_maps_1500_4500_to_unit_interval_and_back():
    v = np.array([1500.0, 3000.0, 4500.0], np.float32)
    assert normalize_velocity(v) == pytest.approx([-1.0, 0.0, 1.0])
    assert denormalize_velocity(normalize_velocity(v)) == pytest.approx(v)


def test_bad_range_names_the_values():
    with pytest.raises(ValueError, match="min=5.0 max=1.0"):
        normalize_data(np.zeros(3), 5.0, 1.0)


def _reference_normalize_data(data, data_min: float, data_max: float) -> np.ndarray:
    """OpenFWI's formula written out (the pre-optimisation implementation)."""
    lo, hi = float(log_transform(data_min)), float(log_transform(data_max))
    x = log_transform(np.asarray(data, dtype=np.float32))
    return (((x - lo) / (hi - lo) - 0.5) * 2.0).astype(np.float32)


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 30.0, 1e6])
def test_normalize_data_is_bit_identical_to_the_formula(scale):
    """The in-place, integer-sign-bit implementation changes no float32 bit (the int8
    encoders' parity depends on it): max abs diff 0, special values included."""
    rng = np.random.default_rng(int(np.log10(scale)) + 40)
    x = (rng.standard_normal((5, 1000, 70)) * scale).astype(np.float32)
    x.flat[:8] = [0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, np.inf, -np.inf]
    for data in (x, x[:, :, 14:28], x.astype(np.float64), x[0, 0, 0]):  # view, f64, 0-d
        got, want = normalize_data(data, -26.95, 52.77), _reference_normalize_data(
            data, -26.95, 52.77)
        assert got.dtype == np.float32 and got.shape == np.shape(data)
        finite = np.isfinite(want)
        assert float(np.max(np.abs(got[finite] - want[finite]))) == 0.0
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_normalize_data_into_a_reused_buffer_is_bit_identical() -> None:
    """``out=``: the encoder's reused buffer gives the same bits as a fresh array, and a
    buffer of the wrong shape or dtype, or one overlapping the input, is refused."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 1000, 14)) * 5).astype(np.float32)
    buf = np.full(x.shape, np.nan, np.float32)
    got = normalize_data(x, -26.95, 52.77, out=buf)
    assert got is buf
    np.testing.assert_array_equal(got.view(np.uint32),
                                  normalize_data(x, -26.95, 52.77).view(np.uint32))
    for bad in (np.empty((5, 1000, 13), np.float32), np.empty(x.shape, np.float64), x):
        with pytest.raises(ValueError, match="out must be"):
            normalize_data(x, -26.95, 52.77, out=bad)
