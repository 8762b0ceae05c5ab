"""Seeded generators of 70 x 70 velocity maps (m/s) for the five OpenFWI families, A and B.

OpenFWI (Deng et al., "OpenFWI: Large-scale Multi-structural Benchmark Datasets for Full
Waveform Inversion", NeurIPS 2022 Datasets and Benchmarks) describes its 2D maps, paraphrased
here, as 70 x 70 cells of 10 m with velocities of 1500-4500 m/s in these families:

* Vel (FlatVel, CurveVel): flat or curved (sine-like) layers; in A the velocity increases with
  depth, in B it need not and the maps are more varied (more layers, more contrast).
* Fault (FlatFault, CurveFault): flat or curved layers cut by faults that shift the rock on one
  side of a dipping fault line (here one or two faults); B is more complex, as for Vel.
* Style: COCO photographs style-transferred with Marmousi as the style, then smoothed. We cannot
  do that without the images, so ``style-*`` here is a *substitute*: a depth trend plus a
  Gaussian random field with a power-law spectrum (A smooth; B rougher, with curved layering
  mixed in). It has none of the object-like shapes and sharp edges of OpenFWI's Style maps.

The numbers the A generators rely on were measured on the real maps (5000 train maps each of
FlatVel-A and CurveVel-A), not taken from the paper: velocities are integers; a map is a stack
of ``n + 1`` layers whose velocities are ``n + 1`` sorted uniform integers in [1500, 4500],
``n`` uniform in 3..7, thickness ``70 / n`` cells +-1 under a random offset of up to half a
layer; so a map has 2..8 distinct velocities in FlatVel-A (mean 5.44) and 3..8 in CurveVel-A
(mean 5.98, nearly always ``n + 1``). Interior layers are >= 9 cells thick and every column is
non-decreasing with depth. CurveVel-A interfaces are near-parallel smooth curves (power mostly
at 1-3 cycles per 70 cells; not one pure sine) whose peak-to-peak height is 9 / 21 / 49 cells
(p5 / p50 / p95, shallowest interface seen whole); ours are sums of two sines, 10 / 21 / 42.
docs/data.md has the full comparison.

Every map depends only on ``(dataset, seed, index)``: map ``i`` of ``generate(name, n, seed)``
is drawn by ``np.random.default_rng`` from child ``i`` of ``np.random.SeedSequence(seed,
spawn_key=(family index,))``, so a longer request starts with the maps of a shorter one, and
two families given the same seed do not share random draws.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.ndimage import gaussian_filter

from epic.data.transforms import VELOCITY_MAX_MPS, VELOCITY_MIN_MPS
from epic.errors import InputError

__all__ = [
    "FAMILY_NAMES",
    "GENERATORS",
    "GRID_SHAPE",
    "VELOCITY_MAX_MPS",
    "VELOCITY_MIN_MPS",
    "generate",
]

FAMILY_NAMES: tuple[str, ...] = (
    "flatvel-a", "flatvel-b", "curvevel-a", "curvevel-b", "flatfault-a",
    "flatfault-b", "curvefault-a", "curvefault-b", "style-a", "style-b",
)  # fmt: skip
GRID_SHAPE = (70, 70)  # (depth z, horizontal x) in 10 m cells

_NZ, _NX = GRID_SHAPE
_Z_CELLS, _X_CELLS = np.meshgrid(
    np.arange(_NZ, dtype=float), np.arange(_NX, dtype=float), indexing="ij"
)
_MARGIN_CELLS = 40.0  # stacks of faulted maps extend this far above and below the grid


class _Stack(NamedTuple):
    """Layers along the undeformed depth axis: ``len(velocities_mps) == len(boundaries) + 1``."""

    boundaries_cells: np.ndarray  # increasing depths of the interfaces, cells
    velocities_mps: np.ndarray  # velocity of each layer, top to bottom, m/s


class _Fold(NamedTuple):
    """Vertical displacement ``curve(x) * (1 + tilt * (z - 35) / 35)`` of the layers, cells."""

    curve: Callable[[np.ndarray], np.ndarray]
    tilt: float


class _Fault(NamedTuple):
    """A straight fault through ``(x0, z0)`` cells, dipping ``dip_rad``; one side slips."""

    x0_cells: float
    z0_cells: float
    dip_rad: float
    facing: int  # +1: the fault dips towards +x, -1 towards -x
    slip_cells: float  # signed slip of the hanging side along the fault, cells


# --- layer stacks -----------------------------------------------------------------------------


def _uniform_velocities(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` integer velocities uniform in [1500, 4500] m/s, in draw order."""
    return rng.integers(VELOCITY_MIN_MPS, VELOCITY_MAX_MPS, count, endpoint=True).astype(float)


def _contrasting_velocities(rng: np.random.Generator, count: int, step_mps: float) -> np.ndarray:
    """Unordered integer velocities (m/s) whose neighbours differ by at least ``step_mps``."""
    velocities = _uniform_velocities(rng, count)
    for i in range(1, count):
        while abs(velocities[i] - velocities[i - 1]) < step_mps:
            velocities[i] = _uniform_velocities(rng, 1)[0]
    return velocities


def _regular_stack(
    rng: np.random.Generator, margin_cells: float = 0.0, offset_max: float = 0.5
) -> _Stack:
    """OpenFWI-A layering: thickness ``70 / n`` (n in 3..7) +-1 cell, shifted by an offset.

    With no margin the stack has ``n + 1`` layers (velocities: sorted uniform integers), the
    last of which lies below the grid when the offset (in layers, uniform in [-0.5,
    offset_max]) is positive. A margin adds layers above (slower) and below (faster) so that
    the stack covers ``[-margin, 70 + margin]`` cells, for faults to bring into view.
    """
    n_base = int(rng.integers(3, 8))
    thickness = _NZ / n_base
    offset = rng.uniform(-0.5, offset_max)
    extra = int(np.ceil(margin_cells / thickness))
    ks = np.arange(1 - extra, n_base + extra + 1)
    boundaries = np.round((ks + offset) * thickness + rng.uniform(-0.5, 0.5, ks.size))
    core = np.sort(_uniform_velocities(rng, n_base + 1))
    above = np.sort(rng.integers(VELOCITY_MIN_MPS, core[0], extra, endpoint=True))
    below = np.sort(rng.integers(core[-1], VELOCITY_MAX_MPS, extra, endpoint=True))
    return _Stack(boundaries, np.concatenate([above, core, below]).astype(float))


def _irregular_stack(rng: np.random.Generator, margin_cells: float = 0.0) -> _Stack:
    """B layering: 4-9 layers of random thickness (>= 5 cells), unordered velocities."""
    span = _NZ + 2 * margin_cells
    n_layers = int(rng.integers(4, 10)) + round(2 * margin_cells / 12.0)
    min_cells = 5.0
    free = rng.dirichlet(np.full(n_layers, 2.0)) * (span - n_layers * min_cells)
    boundaries = np.cumsum(np.floor(free) + min_cells)[:-1] - margin_cells
    return _Stack(boundaries, _contrasting_velocities(rng, n_layers, step_mps=250.0))


# --- deformation: folds and faults ------------------------------------------------------------


def _sine_curve(
    rng: np.random.Generator, cycles: tuple[tuple[float, float], ...], peak_to_peak_cells: float
) -> Callable[[np.ndarray], np.ndarray]:
    """Sum of sines of x (cells), one per ``(low, high)`` range of cycles per 70 cells.

    The first sine has weight 1, the others a random weight in [0.2, 1.3]; the sum is centred
    and scaled to ``peak_to_peak_cells`` over the grid.
    """
    wavenumbers = np.array([rng.uniform(*span) for span in cycles]) * 2.0 * np.pi / _NX
    weights = np.r_[1.0, rng.uniform(0.2, 1.3, len(cycles) - 1)]
    phases = rng.uniform(0.0, 2.0 * np.pi, len(cycles))

    def raw(x: np.ndarray) -> np.ndarray:
        return np.sum(
            [w * np.sin(k * x + p) for w, k, p in zip(weights, wavenumbers, phases, strict=True)],
            axis=0,
        )

    on_grid = raw(np.arange(_NX, dtype=float))
    scale = peak_to_peak_cells / max(float(np.ptp(on_grid)), 1e-6)
    centre = float(on_grid.mean())
    return lambda x: (raw(x) - centre) * scale


def _fold(rng: np.random.Generator, variant: str) -> _Fold:
    """Curvature of CurveVel/CurveFault: A matched to CurveVel-A, B stronger and wigglier."""
    if variant == "a":
        height = float(np.clip(rng.lognormal(np.log(21.0), 0.45), 4.0, 60.0))
        curve = _sine_curve(rng, ((2.0, 3.2), (0.3, 1.8)), height)
        return _Fold(curve, rng.uniform(-0.4, 0.4))
    curve = _sine_curve(rng, ((1.5, 4.0), (0.3, 2.0)), rng.uniform(15.0, 40.0))
    return _Fold(curve, rng.uniform(-0.5, 0.5))


def _faults(rng: np.random.Generator, variant: str) -> list[_Fault]:
    """One or two faults (A: mostly one, slip 6-16 cells; B: mostly two, slip 8-24 cells)."""
    two_probability, slip_range, dip_deg = (
        (0.3, (6.0, 16.0), (50.0, 80.0)) if variant == "a" else (0.7, (8.0, 24.0), (35.0, 80.0))
    )
    count = 2 if rng.random() < two_probability else 1
    return [
        _Fault(
            x0_cells=rng.uniform(15.0, 55.0),
            z0_cells=rng.uniform(20.0, 50.0),
            dip_rad=np.deg2rad(rng.uniform(*dip_deg)),
            facing=int(rng.choice((-1, 1))),
            slip_cells=rng.uniform(*slip_range) * rng.choice((-1.0, 1.0)),
        )
        for _ in range(count)
    ]


def _unfault(x: np.ndarray, z: np.ndarray, fault: _Fault) -> tuple[np.ndarray, np.ndarray]:
    """Move points on the hanging side of ``fault`` back to where they were before it slipped."""
    along_x = fault.facing * np.cos(fault.dip_rad)
    along_z = np.sin(fault.dip_rad)
    hanging = (x - fault.x0_cells) * along_z - (z - fault.z0_cells) * along_x < 0
    return (
        np.where(hanging, x - fault.slip_cells * along_x, x),
        np.where(hanging, z - fault.slip_cells * along_z, z),
    )


def _render(
    stack: _Stack, fold: _Fold | None = None, faults: tuple[_Fault, ...] = ()
) -> np.ndarray:
    """Velocity map (70, 70) float32 m/s of a stack, folded then faulted."""
    x, z = _X_CELLS, _Z_CELLS
    for fault in reversed(faults):
        x, z = _unfault(x, z, fault)
    depth = z if fold is None else z - fold.curve(x) * (1.0 + fold.tilt * (z - 35.0) / 35.0)
    layer = np.searchsorted(stack.boundaries_cells, depth, side="right")
    return stack.velocities_mps[layer].astype(np.float32)


# --- the ten families -------------------------------------------------------------------------


def _flatvel_a(rng: np.random.Generator) -> np.ndarray:
    return _render(_regular_stack(rng))


def _flatvel_b(rng: np.random.Generator) -> np.ndarray:
    return _render(_irregular_stack(rng))


def _curvevel_a(rng: np.random.Generator) -> np.ndarray:
    return _render(_regular_stack(rng, offset_max=0.25), _fold(rng, "a"))


def _curvevel_b(rng: np.random.Generator) -> np.ndarray:
    return _render(_irregular_stack(rng, _MARGIN_CELLS / 2), _fold(rng, "b"))


def _flatfault(rng: np.random.Generator, variant: str) -> np.ndarray:
    stack_fn = _regular_stack if variant == "a" else _irregular_stack
    return _render(stack_fn(rng, _MARGIN_CELLS), None, tuple(_faults(rng, variant)))


def _curvefault(rng: np.random.Generator, variant: str) -> np.ndarray:
    stack_fn = _regular_stack if variant == "a" else _irregular_stack
    return _render(stack_fn(rng, _MARGIN_CELLS), _fold(rng, variant), tuple(_faults(rng, variant)))


def _powerlaw_field(rng: np.random.Generator, exponent: float, aspect: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian field (70, 70) with power ~ |k|^-exponent.

    ``aspect`` > 1 stretches features along x. Made on a 128 x 128 torus and cropped, so the
    crop does not wrap around.
    """
    kz = np.fft.fftfreq(128)[:, None]
    kx = np.fft.rfftfreq(128)[None, :] / aspect
    k = np.hypot(kz, kx)
    k[0, 0] = np.inf
    spectrum = rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)
    field = np.fft.irfft2(spectrum * k ** (-exponent / 2.0), s=(128, 128))[:_NZ, :_NX]
    return (field - field.mean()) / field.std()


def _depth_trend_mps(
    rng: np.random.Generator, top_mps: tuple[float, float], bottom_mps: tuple[float, float]
) -> np.ndarray:
    """A column (70, 1) rising from a random top to a random bottom velocity, m/s."""
    top, bottom = rng.uniform(*top_mps), rng.uniform(*bottom_mps)
    shape = (np.arange(_NZ) / (_NZ - 1)) ** rng.uniform(0.6, 1.6)
    return (top + (bottom - top) * shape)[:, None]


def _finish(velocity_mps: np.ndarray) -> np.ndarray:
    """Round to whole m/s (as OpenFWI) and clip to the velocity range; (70, 70) float32."""
    return np.clip(np.round(velocity_mps), VELOCITY_MIN_MPS, VELOCITY_MAX_MPS).astype(np.float32)


def _style_a(rng: np.random.Generator) -> np.ndarray:
    """Smooth: depth trend + smooth power-law field (exponent 4), Gaussian-smoothed."""
    trend = _depth_trend_mps(rng, (1500.0, 2500.0), (3200.0, 4500.0))
    field = _powerlaw_field(rng, rng.uniform(3.5, 4.5), rng.uniform(1.0, 3.0))
    return _finish(gaussian_filter(trend + rng.uniform(150.0, 400.0) * field, 1.5))


def _style_b(rng: np.random.Generator) -> np.ndarray:
    """Rougher: weaker trend, rougher field (exponent ~3), blended with folded B layering."""
    trend = _depth_trend_mps(rng, (1500.0, 3000.0), (2500.0, 4500.0))
    field = _powerlaw_field(rng, rng.uniform(2.5, 3.3), rng.uniform(1.0, 4.0))
    layers = _render(_irregular_stack(rng, _MARGIN_CELLS / 2), _fold(rng, "b"))
    weight = rng.uniform(0.15, 0.4)
    velocity = (1 - weight) * (trend + rng.uniform(300.0, 650.0) * field) + weight * layers
    return _finish(gaussian_filter(velocity, 0.7))


GENERATORS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "flatvel-a": _flatvel_a,
    "flatvel-b": _flatvel_b,
    "curvevel-a": _curvevel_a,
    "curvevel-b": _curvevel_b,
    "flatfault-a": lambda rng: _flatfault(rng, "a"),
    "flatfault-b": lambda rng: _flatfault(rng, "b"),
    "curvefault-a": lambda rng: _curvefault(rng, "a"),
    "curvefault-b": lambda rng: _curvefault(rng, "b"),
    "style-a": _style_a,
    "style-b": _style_b,
}


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; InputError naming it otherwise (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def generate(dataset: str, count: int, seed: int) -> np.ndarray:
    """Return ``count`` maps of ``dataset`` as (count, 1, 70, 70) float32 m/s in [1500, 4500].

    Deterministic: map ``i`` depends only on ``(dataset, seed, i)``, so a larger ``count``
    starts with the maps of a smaller one.
    Raises InputError (a ValueError) for an unknown dataset, a count that is not an int > 0,
    or a seed that is not an int >= 0.
    """
    if not isinstance(dataset, str) or dataset not in GENERATORS:
        raise InputError(f"unknown dataset {dataset!r}; expected one of {', '.join(FAMILY_NAMES)}")
    count = _check_int("count", count, 1)
    seed = _check_int("seed", seed, 0)
    generator = GENERATORS[dataset]
    family_key = (FAMILY_NAMES.index(dataset),)  # same seed, other family: other maps
    children = np.random.SeedSequence(seed, spawn_key=family_key).spawn(count)
    maps = np.empty((count, 1, *GRID_SHAPE), dtype=np.float32)
    for i, child in enumerate(children):
        maps[i, 0] = generator(np.random.default_rng(child))
    return maps
