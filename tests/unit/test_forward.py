"""Physics checks of the forward model against analytic travel times (real deepwave)."""

import numpy as np
import pytest

from epic.data.forward import OPENFWI_ACQUISITION as ACQ
from epic.data.forward import forward_model
from epic.data.openfwi import DATASETS, read_velocity_maps
from epic.errors import InputError
from tests.conftest import requires_openfwi


def _peak_time_s(trace: np.ndarray, lo: int, hi: int) -> float:
    """Time of the largest positive sample in [lo, hi), refined by a parabola, in seconds."""
    i = lo + int(np.argmax(trace[lo:hi]))
    a, b, c = trace[i - 1], trace[i], trace[i + 1]
    return (i + 0.5 * (a - c) / (a - 2 * b + c)) * ACQ.dt_s


def _layered(v_top: float, v_bottom: float, first_bottom_idx: int) -> np.ndarray:
    v = np.full((70, 70), v_top, np.float32)
    v[first_bottom_idx:] = v_bottom
    return v


@pytest.mark.parametrize("v_top_mps", [1500.0, 2500.0])
def test_direct_wave_moveout_matches_dx_over_v(v_top_mps):
    gather = forward_model(_layered(v_top_mps, 4000.0, 45), threads=2)[0]
    receivers = np.arange(10, 31)  # 100..300 m from the source at x = 0, before any head wave
    picks = [_peak_time_s(gather[0, :, r], 50, 400) for r in receivers]
    slope_s_per_rx = np.polyfit(receivers, picks, 1)[0]
    expected = ACQ.dx_m / v_top_mps
    assert slope_s_per_rx == pytest.approx(expected, rel=0.10)


def test_reflection_arrives_at_two_way_time_plus_wavelet_delay():
    v1 = 2000.0
    first_bottom_idx = 31  # the interface lies halfway between cells 30 and 31: z = 305 m
    depth_m = (first_bottom_idx - 0.5) * ACQ.dx_m - ACQ.source_z_idx * ACQ.dx_m
    two_way_s = 2 * depth_m / v1
    layered, homogeneous = forward_model(
        np.stack([_layered(v1, 4000.0, first_bottom_idx), np.full((70, 70), v1, np.float32)]),
        threads=2,
    )
    # Reflected wave alone, at zero offset under the middle source (shot 2 at x index 34)
    reflection = layered[2, :, 34] - homogeneous[2, :, 34]
    # Wavelet delay: the direct wave after the same path length (2 * depth) in the homogeneous
    # model, i.e. shot 0 recorded at offset round(2 * depth / dx) cells, minus its travel time
    offset_cells = round(2 * depth_m / ACQ.dx_m)
    delay_s = _peak_time_s(homogeneous[0, :, offset_cells], 50, 600) - offset_cells * ACQ.dx_m / v1
    assert 0.09 < delay_s < 0.13  # the 0.1 s Ricker peak time plus the 2-D phase lag
    arrival_s = _peak_time_s(reflection, 100, 900)
    assert abs(arrival_s - (two_way_s + delay_s)) <= 2 * ACQ.dt_s
    # positive impedance contrast: the reflection has the direct wave's (positive) polarity
    assert reflection.max() > -reflection.min()


@requires_openfwi
def test_polarity_and_amplitude_range_match_openfwi_flatvel_a(openfwi_dir):
    maps = read_velocity_maps(openfwi_dir / "FlatVelA_test.zip")
    # the extreme amplitudes of a dataset come from the fastest shallow layers (near-source
    # amplitude grows with the velocity at the source), so model those maps
    fastest_top = np.argsort(maps[:, 0, 1, :].max(axis=1))[-8:]
    gathers = forward_model(maps[fastest_top], threads=2)
    spec = DATASETS["flatvel-a"]
    assert gathers.max() == pytest.approx(spec.data_max, rel=0.25)
    assert gathers.min() == pytest.approx(spec.data_min, rel=0.25)
    # direct wave at the receiver on the source is positive, as in OpenFWI
    near = gathers[:, 0, :, 0]
    assert (near.max(axis=1) > -near.min(axis=1)).all()


def test_deterministic_and_independent_of_batching():
    maps = np.stack([_layered(v, 3500.0, 30) for v in (1600.0, 2200.0, 2900.0)])
    one = forward_model(maps, batch_size=1, threads=1)
    three = forward_model(maps, batch_size=3, threads=2)
    assert one.shape == (3, 5, 1000, 70) and one.dtype == np.float32
    assert np.allclose(one, three, atol=1e-4 * np.abs(one).max())
    assert np.array_equal(one, forward_model(maps, batch_size=1, threads=1))


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (np.full((2, 70, 69), 2000.0, np.float32), r"shape \(2, 70, 69\)"),
        (np.full((70, 70), np.nan, np.float32), "NaN or Inf"),
        (np.full((70, 70), 5000.0, np.float32), r"5000.0 m/s, expected within \(0, 4500.0\]"),
    ],
)
def test_bad_velocity_maps(maps, message):
    with pytest.raises(InputError, match=message):
        forward_model(maps)
