"""``epic <verb>``: a thin command-line layer over the library (epic) and the roles.

The CLI sits above them all: ``epic`` imports no role package and no CLI, and the roles
(devices, central, emulation) import only ``epic``; the verbs here call into both.

Bad input (an :class:`~epic.errors.InputError` or a usage error) prints one line on stderr,
``epic: error: ...``, and exits with status 2; a run-time failure (:class:`~epic.errors.RunError`:
a role exited, results did not come) prints one line the same way and exits with status 1.
Neither shows a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from epic.errors import EXIT_STATUS, InputError, RunError
from epic_cli.testbed import dashboard_cmd, replay_cmd, report_cmd, testbed

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """EPIC testbed: distributed full-waveform inversion on emulated edge devices."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("matplotlib").setLevel(logging.ERROR)  # font fallbacks are not news


@cli.group()
def data() -> None:
    """Synthesise, inspect and plot OpenFWI-layout datasets."""


@data.command("synth")
@click.option("--dataset", required=True, help="OpenFWI dataset name, e.g. flatvel-a.")
@click.option("--count", required=True, type=int, help="Number of shot-gathers (> 0).")
@click.option("--seed", default=0, show_default=True, type=int, help="Generator seed.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory (OpenFWI layout).")
@click.option("--maps", "maps_path", type=click.Path(path_type=Path),
              help="Real velocity maps (.npy, or .zip of .npy) to use in place of generated.")
@click.option("--threads", type=int, default=None, help="torch threads (default: all).")
@click.option("--batch", "batch_size", default=8, show_default=True, type=int,
              help="Maps propagated together.")
@click.option("--overwrite", is_flag=True,
              help="Replace shards already in --out, and discard a partial job.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="Parallel forward-modelling processes (CPU).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--piece-size", default=50, show_default=True, type=int,
              help="Gathers per resumable piece of work.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def data_synth(dataset, count, seed, out_dir, maps_path, threads, batch_size, overwrite,
               workers, device, piece_size, progress) -> None:
    """Write COUNT shot-gathers and velocity maps in OpenFWI's layout, plus a card.json.

    Resumable: run the same command again after an interruption and it continues from the
    pieces already finished (kept in .OUT.partial/ beside OUT).
    """
    from epic.data.synth import synthesize

    result = synthesize(dataset, count, seed, out_dir, maps_path=maps_path, threads=threads,
                        batch_size=batch_size, overwrite=overwrite, progress=progress,
                        workers=workers, device=device, piece_size=piece_size)
    click.echo(
        f"wrote {result.count} {result.card['title']} gathers to {result.out_dir} "
        f"({', '.join(p.name for p in result.shard_paths)}) in {result.wall_s:.1f} s "
        f"({result.count / result.wall_s:.2f} gathers/s); amplitudes "
        f"{result.data_min:.2f}..{result.data_max:.2f}"
    )


@data.command("info")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def data_info(directory: Path, as_json: bool) -> None:
    """Print the shards, shapes, value ranges and dataset card of DIRECTORY."""
    import numpy as np

    from epic.data.openfwi import find_shards, load_data, load_velocity
    from epic.data.synth import read_card

    shards = []
    for pair in find_shards(directory, require_models=False):
        d = load_data(pair.data_path)
        entry = {"data": pair.data_path.name, "shape": list(d.shape),
                 "min": float(np.min(d)), "max": float(np.max(d))}
        if pair.model_path is not None:
            m = load_velocity(pair.model_path)
            entry.update(model=pair.model_path.name, model_shape=list(m.shape),
                         velocity_min_mps=float(np.min(m)), velocity_max_mps=float(np.max(m)))
        shards.append(entry)
    info = {"directory": str(directory), "samples": sum(s["shape"][0] for s in shards),
            "shards": shards, "card": read_card(directory)}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{directory}: {info['samples']} samples in {len(shards)} shard(s)")
    for s in shards:
        line = f"  {s['data']} {tuple(s['shape'])} amplitude {s['min']:.2f}..{s['max']:.2f}"
        if "model" in s:
            line += (f"; {s['model']} {tuple(s['model_shape'])} velocity "
                     f"{s['velocity_min_mps']:.0f}..{s['velocity_max_mps']:.0f} m/s")
        click.echo(line)
    card = info["card"]
    if card:
        click.echo(f"  card: {card['title']}, seed {card['seed']}, generator "
                   f"{card['generator']['kind']}, {card['synthesis_wall_s']} s, "
                   f"deepwave {card['versions'].get('deepwave')}")
    else:
        click.echo("  card: none (not made by epic data synth)")


@data.command("plot")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--index", default=0, show_default=True, type=int, help="Sample to draw.")
@click.option("--out", "out_png", required=True, type=click.Path(path_type=Path))
def data_plot(directory: Path, index: int, out_png: Path) -> None:
    """Draw sample INDEX of DIRECTORY: its velocity map beside three of its shots."""
    from epic.data.openfwi import OpenFWIDataset
    from epic.report.figures import plot_sample

    ds = OpenFWIDataset(directory)
    if not 0 <= index < len(ds):
        raise InputError(f"--index {index}: {directory} holds samples 0..{len(ds) - 1}")
    gather, velocity = ds[index]
    path = plot_sample(velocity, gather, out_png, title=f"{directory} sample {index}")
    click.echo(f"wrote {path}")


@cli.command("train")
@click.option("--model", required=True, help="Registry name: epic, epic-noprior, epic-resize, "
              "inversionnet, isolated, equal-fusion.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=10, show_default=True, type=int)
@click.option("--batch", default=16, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-minutes", type=float, default=None, help="Wall-clock budget.")
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--token-dim", type=int, default=None, help="Latent values per receiver token.")
@click.option("--device-dropout", default=0.3, show_default=True, type=float)
@click.option("--val", "val_dir", type=click.Path(path_type=Path), default=None)
@click.option("--limit", type=int, default=None, help="Use only the first N samples.")
@click.option("--dataset", default=None,
              help="Dataset name for the normalisation (default: from DIR/card.json).")
@click.option("--threads", type=int, default=None)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32",
              show_default=True, help="bf16: mixed-precision autocast (weights stay float32); "
              "about 3x faster for InversionNet on CPUs with AVX512-BF16.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (its last whole epoch).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Training cache root (default: $EPIC_CACHE_DIR or ~/.cache/epic-testbed).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train_cmd(model, data_dir, out_dir, epochs, batch, seed, max_minutes, lr, token_dim,
              device_dropout, val_dir, limit, dataset, threads, precision, resume, device,
              cache_dir, progress) -> None:
    """Train a model on an OpenFWI-layout directory; checkpoints and log.jsonl go to OUT."""
    from epic.train import TrainConfig, train

    cfg = TrainConfig(model=model, data_dir=str(data_dir), out_dir=str(out_dir), epochs=epochs,
                      batch=batch, seed=seed, max_minutes=max_minutes, lr=lr,
                      token_dim=token_dim, device_dropout=device_dropout,
                      val_dir=str(val_dir) if val_dir else None, limit=limit,
                      dataset=dataset, threads=threads, precision=precision, device=device,
                      cache_dir=str(cache_dir) if cache_dir else None)
    record = train(cfg, resume=resume, progress=progress)
    click.echo(json.dumps(record))


@cli.command("finetune")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="EPIC checkpoint, e.g. artifacts/epic-flatvel-a.pt.")
@click.option("--encoders", "encoders_dir", required=True, type=click.Path(path_type=Path),
              help="Its int8 encoders (epic export's output), e.g. "
              "artifacts/encoders/epic-flatvel-a.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="OpenFWI-layout training split.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--epochs", default=3, show_default=True, type=int)
@click.option("--batch", default=16, show_default=True, type=int)
@click.option("--lr", default=1e-4, show_default=True, type=float)
@click.option("--p-int8", default=0.5, show_default=True, type=float,
              help="Probability that a device's latent comes from its int8 encoder.")
@click.option("--device-dropout", default=0.3, show_default=True, type=float)
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="bf16",
              show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first N gathers.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--threads", type=int, default=None)
def finetune_cmd(checkpoint, encoders_dir, data_dir, out_dir, epochs, batch, lr, p_int8,
                 device_dropout, precision, limit, seed, device, threads) -> None:
    """Adapt the decoder to the int8 encoders (quantisation-aware); OUT/model.pt.

    The encoder is frozen, so the exported encoders stay exact for the new checkpoint;
    rerun the same command to resume (see epic/finetune.py).
    """
    from epic.finetune import FinetuneConfig, finetune_decoder

    cfg = FinetuneConfig(epochs=epochs, batch=batch, lr=lr, p_int8=p_int8,
                         device_dropout=device_dropout, precision=precision, seed=seed,
                         limit=limit)
    record = finetune_decoder(checkpoint, encoders_dir, data_dir, out_dir, cfg, device=device,
                              threads=threads)
    click.echo(json.dumps(record))


@cli.command("pipeline")
@click.option("--scale", required=True, type=click.Choice(["smoke", "cpu", "full"]),
              help="smoke: seconds, for tests; cpu: the 2-core budget; full: the issue's "
              "data and OpenFWI-like epochs, for an accelerator.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--openfwi", type=click.Path(path_type=Path), default=Path("../shared/openfwi"),
              show_default=True, help="Folder of the real OpenFWI map zips.")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Where datasets are synthesised (default: OUT/data).")
@click.option("--datasets", default=None, help="Comma-separated subset of the plan.")
@click.option("--max-minutes", type=float, default=None,
              help="Stop after a checkpoint once this wall time has passed; rerun to continue.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="Parallel synthesis processes (CPU).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def pipeline_cmd(scale, out_dir, device, openfwi, data_root, datasets, max_minutes, workers,
                 progress) -> None:
    """Synthesise, train EPIC and InversionNet, evaluate, export the encoders: one job.

    Resumable: every step skips what is already complete in OUT (and --data-root).
    """
    from epic.pipeline import run_pipeline

    results = run_pipeline(scale, out_dir, device=device, openfwi=openfwi,
                           data_root=data_root,
                           datasets=tuple(datasets.split(",")) if datasets else None,
                           max_minutes=max_minutes, workers=workers, progress=progress)
    for name, row in results["datasets"].items():
        for key, entry in row["models"].items():
            click.echo(f"{name} {key}: MAE {entry['test']['mae']:.4f} "
                       f"SSIM {entry['test']['ssim']:.3f}")
    state = "complete" if results["complete"] else "stopped early; run again to continue"
    click.echo(f"{out_dir / 'results.json'}: {state}")


@cli.command("evaluate")
@click.option("--model", required=True)
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_json", required=True, type=click.Path(path_type=Path))
@click.option("--drop-devices", default=0, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--limit", type=int, default=None)
@click.option("--dataset", default=None,
              help="Dataset name for the normalisation (default: from DIR/card.json).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
def evaluate_cmd(model, checkpoint, data_dir, out_json, drop_devices, seed, limit,
                 dataset, device) -> None:
    """Evaluate a checkpoint: MAE, RMSE, SSIM as OpenFWI, plus a PNG beside the JSON."""
    from epic.evaluate import evaluate

    result = evaluate(model, checkpoint, data_dir, out_json, drop_devices=drop_devices,
                      seed=seed, limit=limit, dataset=dataset, device=device)
    click.echo(f"{model}: MAE {result['mae']:.4f} RMSE {result['rmse']:.4f} "
               f"SSIM {result['ssim']:.4f} on {result['samples']} samples -> {out_json}")


@cli.command("export")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="EPIC checkpoint, e.g. artifacts/epic-flatvel-a.pt.")
@click.option("--calibration", "calibration_dir", required=True,
              type=click.Path(path_type=Path), help="Training split (OpenFWI layout).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Receives device-N.tflite, manifest.json and parity.json.")
@click.option("--test", "test_dir", type=click.Path(path_type=Path), default=None,
              help="Test split for the end-to-end parity (MAE/RMSE/SSIM).")
@click.option("--n-calibration", default=64, show_default=True, type=int,
              help="Calibration gathers, drawn at random with --seed.")
@click.option("--n-test", type=int, default=None, help="Test gathers (default: all).")
@click.option("--device", "devices", type=int, multiple=True,
              help="Export only this device (1-based; repeatable; default: all).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", type=int, default=None, help="torch threads (default: all).")
@click.option("--float-stem/--int8-input", default=False, show_default=True,
              help="Keep the first conv block and the input float32 (default: fully int8).")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Remove the int8 latents' mean error per channel, measured on the "
              "calibration gathers, from the encoder's last bias.")
@click.option("--observer", type=click.Choice(["minmax", "histogram"]), default="histogram",
              show_default=True, help="Activation ranges: observed min-max, or the histogram's "
              "L2-optimal range (clips rare outliers).")
def export_cmd(checkpoint, calibration_dir, out_dir, test_dir, n_calibration, n_test, devices,
               seed, threads, float_stem, bias_correction, observer) -> None:
    """Export one int8 TFLite encoder per device, with a manifest and a parity report."""
    from epic.export import export_encoders

    result = export_encoders(checkpoint, calibration_dir, out_dir, n_calibration=n_calibration,
                             test_dir=test_dir, n_test=n_test, devices=devices or None,
                             seed=seed, threads=threads, float_stem=float_stem,
                             bias_correction=bias_correction, observer=observer)
    for path in result.encoder_paths:
        click.echo(f"wrote {path} ({path.stat().st_size:,} bytes)")
    for name, err in result.parity["latent"].items():
        click.echo(f"{name}: latent RMSE {err['rmse_rel_std']:.1%} of its std, cosine >= "
                   f"{err['cosine_min']:.4f} ({err['samples']} {result.parity['data_role']} "
                   "gathers)")
    e2e = result.parity.get("end_to_end")
    if e2e:
        click.echo(f"int8 encoders + float decoder: MAE {e2e['int8_encoders']['mae']:.4f} vs "
                   f"{e2e['float']['mae']:.4f} float ({e2e['mae_relative_growth']:+.2%}, target "
                   f"within +-{e2e['mae_growth_target']:.0%}), SSIM "
                   f"{e2e['int8_encoders']['ssim']:.4f} vs {e2e['float']['ssim']:.4f}")
    click.echo(f"manifest {result.manifest_path}, parity {result.parity_path} "
               f"({result.wall_s:.0f} s)")


@cli.command("export-decoders")
@click.option("--checkpoint", "epic_checkpoint", type=click.Path(path_type=Path), default=None,
              help="EPIC checkpoint whose decoder is exported, e.g. artifacts/epic-flatvel-a.pt.")
@click.option("--inversionnet", "inversionnet_checkpoint", type=click.Path(path_type=Path),
              default=None, help="InversionNet checkpoint, e.g. "
              "artifacts/inversionnet-flatvel-a.pt.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Receives the .onnx graphs, manifest.json and parity.json.")
@click.option("--test", "test_dir", type=click.Path(path_type=Path), default=None,
              help="Test split (OpenFWI layout, with maps) for the runtime/torch parity.")
@click.option("--n-test", type=int, default=None, help="Test gathers (default: all).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", type=int, default=None, help="torch threads (default: all).")
def export_decoders_cmd(epic_checkpoint, inversionnet_checkpoint, out_dir, test_dir, n_test,
                        seed, threads) -> None:
    """Export central's decoders to ONNX (torch-free on ONNX Runtime), with parity."""
    import torch

    from epic.export_decoders import export_decoders

    if threads is not None:
        if threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    command = " ".join(["epic", *sys.argv[1:]]) if sys.argv[1:2] == ["export-decoders"] \
        else None
    result = export_decoders(epic_checkpoint, inversionnet_checkpoint, out_dir,
                             test_dir=test_dir, n_test=n_test, seed=seed, command=command)
    for kind, path in result.graph_paths.items():
        click.echo(f"wrote {path} ({path.stat().st_size:,} bytes; {kind})")
    for kind in ("epic", "inversionnet"):
        rows = result.parity.get(kind)
        if rows is None:
            continue
        for name, row in (rows.items() if kind == "epic" else [("all_present", rows)]):
            click.echo(f"{kind} {name}: MAE runtime {row['runtime']['mae']:.6f} torch "
                       f"{row['torch']['mae']:.6f} (|delta| {row['mae_abs_delta']:.2e}), mean "
                       f"|map diff| {row['map_mean_abs_diff']:.2e}, max "
                       f"{row['map_max_abs_diff']:.2e} on {row['samples']} gathers"
                       f"{'' if row['meets_target'] else '  MISSES the 1e-3 target'}")
    timing = result.parity.get("timing", {})
    for kind in ("epic", "inversionnet"):
        if kind in timing:
            click.echo(f"{kind} decode, batch 1, 1 thread: runtime "
                       f"{timing[kind]['runtime_ms']:.2f} ms, torch {timing[kind]['torch_ms']:.2f}"
                       f" ms per gather")
    click.echo(f"manifest {result.manifest_path}, parity {result.parity_path} "
               f"({result.wall_s:.0f} s)")


@cli.command("simulate")
@click.option("--topology", "topology_path", default="topology.yaml", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(["epic", "raw", "both"]), default="both",
              show_default=True)
@click.option("--shots", default=100, show_default=True, type=int,
              help="Shot-gathers per device.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Write the result JSON here.")
@click.option("--sweep", "sweeps", multiple=True,
              help="key=v1,v2,...: repeat over bandwidth_bps, loss, latent_frame_bytes or "
                   "devices; CSV and PNG go beside --json (or to runs/sweeps).")
@click.option("--cluster", default=None, metavar="ADDRESS",
              help="Run the sweep's points on this Dask scheduler (tcp://host:8786) "
                   "instead of the local cores.")
@click.option("--workers", type=int, default=None,
              help="Local processes for the sweep (default: every core).")
@click.option("--batch", type=int, default=None,
              help="Sweep points per task (default: about 4 tasks per worker).")
def simulate_cmd(topology_path, mode, shots, seed, json_out, sweeps, cluster, workers,
                 batch) -> None:
    """Run the SimPy network model in virtual time: EPIC latents against raw traces.

    Any receiver layout is modelled; the output says when the topology could not run on the
    shipped models (`epic testbed up` would refuse it). A sweep's points run in parallel and
    each result is kept under OUT/points/ (keyed by a hash of the point), so a sweep run
    again computes only the points it lacks."""
    from emulation.simulate import simulate, wire_frame_sizes
    from emulation.sweeps import check_sweep, parse_sweep, sweep
    from epic.published import published_ratios_text
    from epic.topology import load_topology

    topology = load_topology(topology_path)
    parsed_sweeps = [parse_sweep(text) for text in sweeps]  # reject a bad --sweep up front
    sizes = wire_frame_sizes(topology.testbed)
    for key, values in parsed_sweeps:  # every point, before anything is written
        check_sweep(topology, key, values, sizes)
    result = simulate(topology, mode=mode, shots=shots, seed=seed, frame_sizes=sizes,
                      source=topology_path)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(result.to_json() + "\n")
    for summary in result.modes:
        lat = summary.gather_latency_s
        click.echo(f"{summary.mode:5s} gather latency p50 {lat.p50 * 1e3:8.1f} ms  p95 "
                   f"{lat.p95 * 1e3:8.1f} ms  p99 {lat.p99 * 1e3:8.1f} ms  uplink "
                   f"{summary.uplink_bytes:,} B  comm energy {summary.comm_j:.3f} J  "
                   f"lost {summary.frames_lost}/{summary.frames}")
        compute_j = sum(e.compute_j for e in summary.energy)
        radio_j = sum(e.radio_j for e in summary.energy)
        click.echo(f"      device energy: compute {compute_j:.3f} J + radio {radio_j:.3f} J "
                   f"= {compute_j + radio_j:.3f} J (hardware class + radio)")
        for e in summary.energy if len(summary.energy) <= 8 else ():
            click.echo(f"        {e.device_id}: compute {e.compute_j:.3f} J + radio "
                       f"{e.radio_j:.3f} J = {e.total_j:.3f} J")
    if result.ratios is not None:
        r = result.ratios
        click.echo(f"raw/EPIC: latency p50 {r.latency_p50:.1f}x, communication energy "
                   f"{r.energy_comm:.1f}x, bytes {r.bytes:.0f}x ({published_ratios_text()})")
    fit = result.shipped_models
    if fit is not None and not fit.fits:
        more = len(fit.problems) - 1
        click.echo(f"note: modelled, but this topology could not run on the shipped models: "
                   f"{fit.problems[0]}" + (f" (and {more} more devices)" if more else ""))
    out_dir = json_out.parent if json_out else Path("runs/sweeps")
    runner = None
    if parsed_sweeps:
        from emulation.sweeps import SweepRunner

        runner = SweepRunner(out_dir / "points", cluster=cluster, workers=workers, batch=batch)
    for key, values in parsed_sweeps:
        done = sweep(topology, key, values, out_dir, shots=min(shots, 20), seed=seed,
                     frame_sizes=sizes, runner=runner)
        click.echo(f"sweep {key}: {done.csv_path} {done.png_path}")


cli.add_command(testbed)
cli.add_command(replay_cmd)
cli.add_command(report_cmd)
cli.add_command(dashboard_cmd)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for bad input, 1 for a run-time failure, each with
    one line on stderr)."""
    try:
        # without standalone mode click returns a command's Exit(code) as the value
        status = cli.main(args=argv, prog_name="epic", standalone_mode=False)
        if isinstance(status, int) and not isinstance(status, bool) and status:
            return status
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(f"epic: error: {exc.format_message()}", err=True)
        return 2
    except (InputError, RunError) as exc:
        click.echo(f"epic: error: {exc}", err=True)
        return next(code for kind, code in EXIT_STATUS.items() if isinstance(exc, kind))
    except OSError as exc:  # a path given on the command line that cannot be used
        click.echo(f"epic: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("epic: aborted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
