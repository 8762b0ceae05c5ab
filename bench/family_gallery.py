"""Gallery and statistics of the velocity-map families against real OpenFWI maps.

    python bench/family_gallery.py --real-dir ../shared/openfwi --out docs/img/families.png
    python bench/family_gallery.py --real-dir ../shared/openfwi --stats   # + markdown table

The picture shows 3 generated maps of each of the 10 families and 3 real FlatVel-A and
CurveVel-A maps, on one colour scale 1500-4500 m/s. ``--stats`` prints the statistics of
docs/data.md, measured on the real train maps and on as many generated maps, and the
generation time per family. The real maps are only read, never copied.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
import zipfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from epic.data import families

REAL = {"flatvel-a": "FlatVelA_train.zip", "curvevel-a": "CurveVelA_train.zip"}
MAPS_PER_FAMILY = 3


def load_real(real_dir: Path, name: str, limit: int) -> np.ndarray:
    """Up to ``limit`` real maps (n, 70, 70) m/s of one dataset, shard by shard."""
    path = real_dir / REAL[name]
    if not path.is_file():
        raise SystemExit(f"real OpenFWI maps not found: {path} (pass --real-dir)")
    maps: list[np.ndarray] = []
    with zipfile.ZipFile(path) as archive:
        members = sorted(archive.namelist(), key=lambda m: int("".join(filter(str.isdigit, m))))
        for member in members:
            maps.append(np.load(io.BytesIO(archive.read(member)))[:, 0])
            if sum(len(m) for m in maps) >= limit:
                break
    return np.concatenate(maps)[:limit]


def plot_gallery(real: dict[str, np.ndarray], out: Path, seed: int, dpi: int) -> None:
    """Two families per row (3 maps each); the last row holds the real maps."""
    rows = [
        (families.FAMILY_NAMES[i], families.FAMILY_NAMES[i + 1])
        for i in range(0, len(families.FAMILY_NAMES), 2)
    ]
    panels = [
        (name, families.generate(name, MAPS_PER_FAMILY, seed)[:, 0])
        for pair in rows
        for name in pair
    ]
    panels += [(f"real {name}", real[name][:MAPS_PER_FAMILY]) for name in REAL]
    fig, axes = plt.subplots(
        len(panels) // 2, 2 * MAPS_PER_FAMILY, figsize=(10.5, 10.0), layout="constrained"
    )
    for p, (label, maps) in enumerate(panels):
        for j, vmap in enumerate(maps):
            ax = axes[p // 2, (p % 2) * MAPS_PER_FAMILY + j]
            image = ax.imshow(
                vmap, cmap="jet", vmin=families.VELOCITY_MIN_MPS, vmax=families.VELOCITY_MAX_MPS
            )
            ax.set_title(f"{label} #{j}", fontsize=8, color="darkred" if "real" in label else "k")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.4, label="velocity (m/s)")
    fig.suptitle(f"generated families (seed {seed}) and real OpenFWI maps; x right, depth down")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def interfaces_cells(vmap: np.ndarray) -> list[np.ndarray]:
    """Depth (cells) of the top of every layer but the first, per column, of a layered map."""
    return [(vmap < v).sum(axis=0).astype(float) for v in np.unique(vmap)[1:]]


def layer_stats(maps: np.ndarray) -> dict[str, str]:
    """Statistics of layered maps (n, 70, 70) m/s as printable strings."""
    distinct = np.array([len(np.unique(m)) for m in maps])
    shares = np.bincount(distinct, minlength=9)[2:9] / len(maps)
    thick, heights, dominant = [], [], []
    for vmap in maps:
        tops = interfaces_cells(vmap)
        thick += [
            float(np.median(b - a))
            for a, b in itertools.pairwise(tops)
            if a.min() > 0 and b.max() < 70
        ]
        whole = [t for t in tops if t.min() > 0 and t.max() < 70]
        if whole:
            heights.append(np.ptp(whole[0]))
            spectrum = np.abs(np.fft.rfft(whole[0] - whole[0].mean()))
            dominant.append(int(np.argmax(spectrum[1:])) + 1)
    spread = f"{distinct.min()}-{distinct.max()}"
    thick_med = np.median(thick)
    heights_text = dom_text = "- (flat)"
    if max(heights, default=0) > 0:
        heights_text = "{:.0f} / {:.0f} / {:.0f}".format(*np.percentile(heights, [5, 50, 95]))
        dom = np.bincount(dominant, minlength=5)[1:5] / len(dominant)
        dom_text = "/".join(f"{d:.2f}" for d in dom)
    monotone = np.mean(np.all(np.diff(maps, axis=1) >= 0, axis=(1, 2)))
    return {
        "distinct velocities per map: mean (min-max)": f"{distinct.mean():.2f} ({spread})",
        "share with 2/3/4/5/6/7/8 distinct": "/".join(f"{s:.2f}" for s in shares),
        "interior layer thickness, cells: min / median": f"{min(thick):.0f} / {thick_med:.0f}",
        "top-row velocity, m/s: median": f"{np.median(maps[:, 0]):.0f}",
        "bottom-row velocity, m/s: median": f"{np.median(maps[:, -1]):.0f}",
        "integer velocities": f"{np.mean(maps == np.round(maps)):.3f}",
        "maps non-decreasing with depth": f"{monotone:.3f}",
        "first whole interface, peak-to-peak cells: p5 / p50 / p95": heights_text,
        "its dominant wavenumber 1/2/3/4 cycles per 70 cells": dom_text,
    }


def print_stats(real: dict[str, np.ndarray], seed: int) -> None:
    """Markdown table: real vs generated, for each A family with real data; then timings."""
    columns = {}
    for name, maps in real.items():
        columns[f"real {name}"] = layer_stats(maps)
        columns[f"ours {name}"] = layer_stats(families.generate(name, len(maps), seed)[:, 0])
    rows = next(iter(columns.values())).keys()
    n_maps = len(next(iter(real.values())))
    print(f"| statistic ({n_maps} maps each) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for row in rows:
        print(f"| {row} | " + " | ".join(col[row] for col in columns.values()) + " |")
    print()
    for name in families.FAMILY_NAMES:
        start = time.perf_counter()
        families.generate(name, 1000, seed)
        print(f"{name}: 1000 maps in {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-dir", type=Path, default=Path("../shared/openfwi"))
    parser.add_argument("--out", type=Path, default=Path("docs/img/families.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument("--stats", action="store_true", help="also print the statistics table")
    parser.add_argument("--stats-maps", type=int, default=5000, help="real maps per dataset")
    args = parser.parse_args()
    limit = args.stats_maps if args.stats else MAPS_PER_FAMILY
    real = {name: load_real(args.real_dir, name, limit) for name in REAL}
    plot_gallery(real, args.out, args.seed, args.dpi)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    if args.stats:
        print_stats(real, args.seed)


if __name__ == "__main__":
    main()
