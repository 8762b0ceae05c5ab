"""The testbed report: Markdown and PNGs from a run directory.

``write_report(rundir, out_dir)`` reads RUNDIR/replay.json (written by ``epic replay``),
RUNDIR/results.jsonl and RUNDIR/maps/, and writes to ``out_dir``:

- ``report.md``: a table per mode (latency p50/p95/p99 and its breakdown, bytes per gather,
  energy per device, MAE/SSIM; partial decodes, the devices present and their fidelity cost
  against full decodes, dead devices), the ratios raw over EPIC beside the published 8.9x (latency)
  and 33.8x (energy), and the SimPy model's prediction beside the live numbers;
- ``maps.png`` (truth, EPIC, centralized, where available), ``latency.png`` (breakdown bars),
  ``energy.png`` (communication energy per device).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from epic.errors import InputError
from epic.published import PUBLISHED_ENERGY_RATIO, PUBLISHED_LATENCY_RATIO
from epic.rundir import RunDir, read_json

__all__ = ["PUBLISHED_ENERGY_RATIO", "PUBLISHED_LATENCY_RATIO", "partial_lines",
           "write_report"]

log = logging.getLogger(__name__)

_STAGES = ("encode", "link_broker", "assembly", "decode")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1e3:.1f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}x"


def _metrics(m: dict) -> str:
    return f"MAE {m['mae']:.4f}, SSIM {m['ssim']:.4f}"


def partial_lines(s: dict) -> list[str]:
    """Plain-text lines on one mode summary's dead devices, partial decodes and their cost."""
    agents = s.get("agents") or {}
    lines = []
    if agents.get("skipped_dead"):
        lines.append(f"dead devices (kill-device), not started: "
                     f"{', '.join(agents['skipped_dead'])}")
    if agents.get("killed"):
        lines.append(f"agents killed during the run (kill-device): {', '.join(agents['killed'])}")
    for dropped in s.get("dropped") or []:
        lines.append(f"dropped by central: gather {dropped['gather']}: {dropped['reason']}")
    for group in s.get("partial_sets") or []:
        lines.append(f"partial: {len(group['gathers'])} of {s['gathers']} gathers decoded "
                     f"without {', '.join(group['absent'])} (present: "
                     f"{', '.join(group['present'])}; gathers "
                     f"{', '.join(map(str, group['gathers']))})")
    cost = s.get("fidelity_cost")
    if cost is None:
        if s.get("partial"):
            lines.append("fidelity cost of the partial decodes: n/a (no map or no --truth)")
        return lines
    p, f = cost["partial"], cost["full"]
    if f is None:
        lines.append(f"fidelity of the {p['n']} partial decodes: {_metrics(p)}; no full "
                     f"decode with metrics on this testbed to compare against")
        return lines
    against = {"same gathers, earlier replay": "full decodes of the same gathers by an "
               "earlier replay", "this replay": "the full decodes of this replay (other "
               "gathers)"}.get(cost["baseline"], "the full decodes earlier on this testbed "
                                                 "(other gathers)")
    d = cost["delta"]
    lines.append(f"fidelity cost of the {p['n']} partial decodes against {against} (n={f['n']}, "
                 f"gathers {', '.join(map(str, f['gathers']))}): MAE {p['mae']:.4f} vs "
                 f"{f['mae']:.4f} ({d['mae']:+.4f}), SSIM {p['ssim']:.4f} vs {f['ssim']:.4f} "
                 f"({d['ssim']:+.4f})")
    return lines


def _mode_table(s: dict) -> list[str]:
    lines = [f"### {s['mode']} ({s['gathers']} gathers, {s['partial']} partial, "
             f"{s['maps']} maps)", "",
             "| latency (ms) | p50 | p95 | p99 |", "|---|---:|---:|---:|"]
    rows = [("capture -> decode end", s["capture_to_decode_s"]),
            ("publish -> decode end", s["publish_to_decode_s"]),
            *((f"  {k}", s["stages_s"][k]) for k in _STAGES)]
    for name, p in rows:
        lines.append(f"| {name} | {_ms(p['p50'])} | {_ms(p['p95'])} | {_ms(p['p99'])} |")
    lines += ["", f"Bytes per gather: {s['bytes_per_gather']:,.0f} (frames), "
                  f"{s['link_bytes_per_gather']:,.0f} (on the emulated links, with headers and "
                  f"resends).", "",
              "| device | compute J | radio J | total J | comm J | tx J | rx J | link bytes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def joules(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    for device, e in s["energy_j"].items():
        lines.append(f"| {device} | {joules(e.get('compute'))} | {joules(e.get('radio'))} | "
                     f"{joules(e.get('total'))} | {e['comm']:.4f} | {e['tx']:.4f} | "
                     f"{e['rx']:.4f} | {e['up_wire_bytes']:,} |")
    lines += ["", "Compute energy: the device's hardware class, active power over its encode "
                  "time plus idle power over the rest of the mode (docs/topology.md); radio: "
                  "its link proxy's books (tx, rx, idle, sleep)."]
    fid = s.get("fidelity")
    lines += ["", ("Fidelity: " + ", ".join(f"{k.upper()} {v:.4f}" for k, v in fid.items())
                   if fid else "Fidelity: n/a (no map or no --truth)"), ""]
    faults = partial_lines(s)
    if faults:
        lines += ["Faults and partial decodes (central decoded at its deadline without the "
                  "absent devices):", "", *(f"- {line}" for line in faults), ""]
    return lines


def _j(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _plot_latency(modes: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    bottom = np.zeros(len(modes))
    for stage in _STAGES:
        values = np.array([(m["stages_s"][stage]["mean"] or 0.0) * 1e3 for m in modes.values()])
        ax.bar(list(modes), values, bottom=bottom, label=stage)
        bottom += values
    ax.set_ylabel("mean latency per device gather (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_energy(modes: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    devices = list(next(iter(modes.values()))["energy_j"])
    width = 0.8 / len(modes)
    for k, (name, m) in enumerate(modes.items()):
        ax.bar(np.arange(len(devices)) + k * width, [m["energy_j"][d]["comm"] for d in devices],
               width, label=name)
    ax.set_xticks(np.arange(len(devices)) + width * (len(modes) - 1) / 2, devices)
    ax.set_yscale("log")
    ax.set_ylabel("communication energy (J)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_maps(rundir: Path, replay: dict, path: Path) -> bool:
    """Truth / EPIC / centralized maps of the first replayed gather; False if none exist."""
    import matplotlib.pyplot as plt

    gather = replay["start"]
    panels: list[tuple[str, np.ndarray]] = []
    if replay.get("truth"):
        from epic.data.openfwi import OpenFWIDataset

        where = Path(replay["truth"])  # relative: to RUNDIR (a copied compose run)
        truth = OpenFWIDataset(where if where.is_absolute() else rundir / where)[gather][1]
        if truth is not None:
            panels.append(("truth", np.asarray(truth).reshape(70, 70)))
    for name, mode in (("EPIC", "latent"), ("centralized", "raw")):
        npy = RunDir(rundir).map(mode, gather)
        if npy.is_file():
            panels.append((name, np.load(npy)))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.3), squeeze=False)
    for ax, (name, v) in zip(axes[0], panels, strict=True):
        im = ax.imshow(v, cmap="viridis", vmin=1500, vmax=4500)
        ax.set_title(f"{name}, gather {gather}")
        ax.axis("off")
    fig.colorbar(im, ax=axes[0].tolist(), label="m/s", shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(rundir: Path, out_dir: Path) -> Path:
    """Write report.md and its PNGs for RUNDIR's last replay; return the report's path.

    Raises InputError if RUNDIR has no replay.json.
    """
    import matplotlib

    matplotlib.use("Agg")
    rundir, out_dir = Path(rundir), Path(out_dir)
    source = RunDir(rundir).replay
    replay = read_json(source)  # RecordError (an InputError) if it is not a JSON object
    if replay is None:
        raise InputError(f"cannot read {source} (run `epic replay` first): no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    modes = replay["modes"]
    lines = [f"# EPIC testbed report: {replay['testbed']}", "",
             f"Topology `{replay['topology']}`, data `{replay['data']}`, gathers "
             f"{replay['start']}..{replay['start'] + replay['shots'] - 1}, rate "
             f"{replay['rate']}. Latency is per device and gather (wall clock, one machine).",
             ""]
    if "raw" in modes and not replay.get("raw_decoded"):
        lines += ["Raw mode ran without an InversionNet checkpoint: its gathers were assembled "
                  "and timed (latency, bytes, energy) but not decoded, so its decode time is "
                  "~0 and it has no map or fidelity.", ""]
    for summary in modes.values():
        lines += _mode_table(summary)
    ratios, pred = replay.get("ratios"), replay.get("prediction") or {}
    if ratios:
        pr = pred.get("ratios") or {}
        lines += ["## Raw over EPIC", "", "| ratio | live | SimPy model | published |",
                  "|---|---:|---:|---:|",
                  f"| latency p50 (capture -> decode) | {_x(ratios['latency_p50'])} | "
                  f"{_x(pr.get('latency_p50'))} | {PUBLISHED_LATENCY_RATIO}x |",
                  f"| latency p95 | {_x(ratios['latency_p95'])} | | |",
                  f"| link + broker latency p50 | {_x(ratios['link_latency_p50'])} | | |",
                  f"| communication energy | {_x(ratios['energy_comm'])} | "
                  f"{_x(pr.get('energy_comm'))} | {PUBLISHED_ENERGY_RATIO}x |",
                  f"| bytes | {_x(ratios['bytes'])} | {_x(pr.get('bytes'))} | |", ""]
    if pred.get("modes"):
        lines += ["## Live against the SimPy model", "",
                  f"Model: same topology and gather count, a gather every "
                  f"{pred['interval_s'] * 1e3:.1f} ms. The model's latency ends when central "
                  f"has the device's last frame, so it compares with encode + link_broker.", "",
                  "| mode | live encode+link p50 (ms) | model p50 (ms) | live comm J | "
                  "model comm J |", "|---|---:|---:|---:|---:|"]
        for name, m in pred["modes"].items():
            live = modes[name]["stages_s"]
            link = [live[k]["p50"] for k in ("encode", "link_broker")]
            lines.append(f"| {name} | {_ms(sum(link) if None not in link else None)} | "
                         f"{_ms(m['gather_latency_s']['p50'])} | {modes[name]['comm_j']:.4f} |"
                         f" {m['comm_j']:.4f} |")
        lines.append("")
        lines += ["Encode time and compute energy on the devices' hardware classes (the model's "
                  "span is gathers x interval, the live one each proxy's uptime over the mode):",
                  "", "| mode | live encode p50 (ms) | model encode (ms) | live compute J | "
                  "model compute J | live radio J | model radio J |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, m in pred["modes"].items():
            live, energy = modes[name], m.get("energy_j") or {}
            model_compute = sum(e["compute"] for e in energy.values()) if energy else None
            model_radio = sum(e["radio"] for e in energy.values()) if energy else None
            lines.append(
                f"| {name} | {_ms(live['stages_s']['encode']['p50'])} | "
                f"{_ms(m.get('encode_s'))} | "
                f"{_j(live.get('compute_j'))} | {_j(model_compute)} | "
                f"{_j(live.get('radio_j'))} | {_j(model_radio)} |")
        lines.append("")
    _plot_latency(modes, out_dir / "latency.png")
    _plot_energy(modes, out_dir / "energy.png")
    lines += ["## Figures", "", "![latency breakdown](latency.png)", "",
              "![energy per device](energy.png)", ""]
    if _plot_maps(rundir, replay, out_dir / "maps.png"):
        lines += ["![velocity maps](maps.png)", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    log.info("report in %s", report)
    return report
