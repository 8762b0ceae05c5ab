"""``epic testbed up|status|down|fault``, ``epic replay`` and ``epic report``: the live testbed.

Thin wrappers over :mod:`emulation.runtime` (one interface, processes or containers: ``up``
takes ``--runtime``, every other verb finds the runtime from ``--dir``),
:mod:`emulation.replay` and :mod:`epic.report.testbed_report`; registered on ``epic`` by
:mod:`epic_cli.main`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["dashboard_cmd", "replay_cmd", "report_cmd", "testbed"]


@click.group()
def testbed() -> None:
    """Bring the testbed up (processes or containers), inspect it, fault it, bring it down."""


@testbed.command("up")
@click.option("--topology", "topology_path", default="topology.yaml", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path), help="Run directory (logs, status, results).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Central's latent model (default: the shipped artifacts/epic-flatvel-a.pt).")
@click.option("--raw-checkpoint", type=click.Path(path_type=Path), default=None,
              help="InversionNet for raw mode (without it raw gathers are timed, not decoded).")
@click.option("--truth", type=click.Path(path_type=Path), default=None,
              help="OpenFWI-layout dir with the true maps (central computes MAE/SSIM).")
@click.option("--port", "broker_port", type=int, default=None,
              help="Broker port (default: a free one; docker: host port, default 1883).")
@click.option("--timeout-s", default=90.0, show_default=True, type=float)
@click.option("--runtime", type=click.Choice(["process", "docker"]), default="process",
              show_default=True, help="Roles as processes, or as containers (Docker SDK).")
@click.option("--no-build", is_flag=True,
              help="docker: use the existing epic-device/epic-central images, do not build.")
@click.option("--dashboard", is_flag=True,
              help="Also start the live dashboard (loopback, a free port) and print its URL.")
def testbed_up(topology_path, rundir, checkpoint, raw_checkpoint, truth, broker_port,
               timeout_s, runtime, no_build, dashboard) -> None:
    """Start broker, link proxies and central; wait until they are healthy."""
    from emulation.runtime import RUNTIMES

    chosen = RUNTIMES[runtime].for_up(rundir, build=not no_build)
    status = chosen.up(topology_path, checkpoint=checkpoint, raw_checkpoint=raw_checkpoint,
                       truth=truth, broker_port=broker_port, timeout_s=timeout_s)
    click.echo(chosen.up_line(status))
    if dashboard:
        started = chosen.start_dashboard()
        if started is None:
            click.echo(f"dashboard: run `epic dashboard --dir {status.rundir}`")
        else:
            url, pid = started
            click.echo(f"dashboard {url} (pid {pid}; `epic testbed down` stops it)")


@testbed.command("compose")
@click.option("--topology", "topology_path", default="topology.yaml", show_default=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", default="docker-compose.yml", show_default=True,
              type=click.Path(path_type=Path, dir_okay=False))
@click.option("--check", is_flag=True,
              help="Write nothing; exit 1 if --out differs from what would be generated.")
def testbed_compose(topology_path, out, check) -> None:
    """Generate docker-compose.yml from the topology (`docker compose up` then runs it)."""
    from emulation.compose import compose_text, write_compose
    from epic.errors import InputError
    from epic.topology import load_topology

    if check:
        import os

        source = os.path.relpath(Path(topology_path).resolve(), Path(out).resolve().parent)
        want = compose_text(load_topology(topology_path), source=source)
        if not Path(out).is_file() or Path(out).read_text() != want:
            raise InputError(f"{out} is not generated from {topology_path}; run `epic "
                             f"testbed compose --topology {topology_path} --out {out}`")
        click.echo(f"{out} matches {topology_path}")
        return
    path = write_compose(topology_path, out)
    click.echo(f"wrote {path} from {topology_path}; run `docker compose up`")


@testbed.command("stack")
@click.option("--topology", "topology_path", default="topology.yaml", show_default=True,
              type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", default="docker-stack.yml", show_default=True,
              type=click.Path(path_type=Path, dir_okay=False))
@click.option("--pin", is_flag=True,
              help="Also place each device by a label of its own (epic.device-N=true).")
@click.option("--check", is_flag=True,
              help="Write nothing; exit 1 if --out differs from what would be generated.")
def testbed_stack(topology_path, out, pin, check) -> None:
    """Generate docker-stack.yml (Docker Swarm) from the topology; see docs/deployment.md."""
    import os

    from emulation.swarm import stack_text, write_stack
    from epic.errors import InputError
    from epic.topology import load_topology

    if check:
        source = os.path.relpath(Path(topology_path).resolve(), Path(out).resolve().parent)
        want = stack_text(load_topology(topology_path), source=source, pin=pin)
        if not Path(out).is_file() or Path(out).read_text() != want:
            raise InputError(f"{out} is not generated from {topology_path}; run `epic "
                             f"testbed stack --topology {topology_path} --out {out}`")
        click.echo(f"{out} matches {topology_path}")
        return
    path = write_stack(topology_path, out, pin=pin)
    click.echo(f"wrote {path} from {topology_path}; then `docker stack deploy -c {out} epic` "
               "(docs/deployment.md)")


@testbed.command("status")
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def testbed_status(rundir, as_json) -> None:
    """Roles (alive?), links, frames accepted/rejected and energy so far."""
    from emulation.runtime import runtime_for

    state = runtime_for(rundir).status()
    if as_json:
        click.echo(json.dumps(state.to_dict(), indent=2))
        return
    click.echo(f"testbed {state.testbed} in {state.rundir}, broker {state.broker}")
    for name, role in state.roles.items():
        click.echo(f"  {name:8s} {role.where}  {'alive' if role.alive else 'DEAD'}")
    frames = state.frames or {}
    rejected = frames.get("rejected") or {}
    click.echo(f"  frames accepted {frames.get('accepted', 0)}, rejected "
               f"{sum(rejected.values())} {rejected or ''}"
               f", gathers {(state.gathers or {}).get('decoded')}")
    for device, link in state.links.items():
        energy = link.energy_j
        click.echo(f"  {device}: link {link.link} port {link.port}, publishes "
                   f"{link.publishes}, comm {energy.get('comm', 0.0):.4f} J, radio "
                   f"{energy.get('radio', 0.0):.3f} J")


@testbed.command("down")
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--timeout-s", default=15.0, show_default=True, type=float,
              help="SIGTERM grace per role before SIGKILL.")
def testbed_down(rundir, timeout_s) -> None:
    """Stop everything `up` started (processes or containers). Always safe to run."""
    from emulation.runtime import runtime_for

    runtime = runtime_for(rundir)
    click.echo(runtime.down_line(runtime.down(timeout_s=timeout_s)))


@testbed.group("fault")
def testbed_fault() -> None:
    """Inject a fault into the running testbed."""


@testbed_fault.command("restart-broker")
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--hard", is_flag=True, help="SIGKILL (no database save) instead of SIGTERM.")
def fault_restart_broker(rundir, hard) -> None:
    """Stop the broker and start it again on the same port and persistence."""
    from emulation.runtime import runtime_for

    now = runtime_for(rundir).restart_broker(hard=hard)
    click.echo(f"broker restarted ({'hard' if hard else 'soft'}): {now}")


@testbed_fault.command("degrade-link")
@click.argument("device_id")
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--loss", type=float, default=None, help="Loss probability per packet, 0..1.")
@click.option("--bandwidth-bps", type=float, default=None, help="Bit rate, bit/s.")
@click.option("--delay-s", type=float, default=None, help="One-way delay, seconds.")
def fault_degrade_link(device_id, rundir, loss, bandwidth_bps, delay_s) -> None:
    """Give DEVICE_ID (e.g. device-2) a degraded link; the proxies pick it up live."""
    from emulation.runtime import runtime_for

    path = runtime_for(rundir).degrade_link(device_id, loss=loss, bandwidth_bps=bandwidth_bps,
                                            delay_s=delay_s)
    click.echo(f"{device_id}: link degraded in {path}")


@testbed_fault.command("kill-device")
@click.argument("device_id")
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path))
def fault_kill_device(device_id, rundir) -> None:
    """Mark DEVICE_ID dead: SIGKILL its running agent; later replays do not start it."""
    from emulation.runtime import runtime_for

    killed = runtime_for(rundir).kill_device(device_id)
    click.echo(f"{device_id}: dead ({f'{killed} killed' if killed else 'no agent running'}"
               f"); central decodes without it at its deadline")


@testbed_fault.command("restore-device")
@click.argument("device_id")
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path))
def fault_restore_device(device_id, rundir) -> None:
    """Undo kill-device: the next replay starts DEVICE_ID's agent again."""
    from emulation.runtime import runtime_for

    was_dead = runtime_for(rundir).restore_device(device_id)
    click.echo(f"{device_id}: restored" if was_dead else f"{device_id}: was not dead")


@click.command("dashboard")
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path), help="Run directory to watch (read only).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Bind address; anything but loopback needs --token.")
@click.option("--port", default=8050, show_default=True, type=int)
@click.option("--token", default=None, envvar="EPIC_DASHBOARD_TOKEN",
              help="Every request must carry it (Bearer header or ?token=) "
                   "[env EPIC_DASHBOARD_TOKEN].")
def dashboard_cmd(rundir, host, port, token) -> None:
    """Serve the live dashboard of RUNDIR (page, server-sent events, /metrics)."""
    from emulation.dashboard import check_bind, serve
    from emulation.dashboard.launch import url_of

    check_bind(host, token)
    click.echo(f"dashboard of {rundir}: {url_of(host, port)}"
               f"{'?token=<token>' if token else ''}  (/metrics for Prometheus; Ctrl-C stops)")
    serve(rundir, host=host, port=port, token=token)


@click.command("replay")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="OpenFWI-layout directory (real or synthesised).")
@click.option("--shots", required=True, type=int, help="Shot-gathers to replay per mode.")
@click.option("--start", default=0, show_default=True, type=int, help="First gather index.")
@click.option("--mode", type=click.Choice(["epic", "raw", "both"]), default="both",
              show_default=True)
@click.option("--rate", type=click.Choice(["realtime", "max"]), default="max",
              show_default=True)
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
@click.option("--dir", "rundir", default="runs/testbed", show_default=True,
              type=click.Path(path_type=Path))
@click.option("--timeout-s", default=300.0, show_default=True, type=float,
              help="Per mode: agents plus decoding.")
@click.option("--start-lead-s", default=None, type=float,
              help="Seconds from launching the agents to their shared start instant "
                   "[default: 4].")
def replay_cmd(data_dir, shots, start, mode, rate, json_out, rundir, timeout_s,
               start_lead_s) -> None:
    """Replay gathers through the device agents over the running testbed; measure."""
    from emulation.replay import replay
    from epic.published import published_ratios_text
    from epic.report.testbed_report import partial_lines

    lead = {} if start_lead_s is None else {"lead_s": start_lead_s}
    result = replay(rundir, data_dir, shots, mode, rate, json_out, start=start,
                    timeout_s=timeout_s, **lead)
    for name, s in result["modes"].items():
        lat = s["capture_to_decode_s"]
        if lat["p50"] is None:  # nothing decoded (every gather dropped)
            click.echo(f"{name:5s} 0 gathers decoded  comm {s['comm_j']:.4f} J")
        else:
            click.echo(f"{name:5s} {s['gathers']} gathers  capture->decode p50 "
                       f"{lat['p50'] * 1e3:8.1f} ms  p95 {lat['p95'] * 1e3:8.1f} ms  p99 "
                       f"{lat['p99'] * 1e3:8.1f} ms  {s['bytes_per_gather']:,.0f} B/gather  "
                       f"comm {s['comm_j']:.4f} J")
        for line in partial_lines(s):
            click.echo(f"      {line}")
    dropped = [(name, d) for name, s in result["modes"].items() for d in s.get("dropped", ())]
    r = result["ratios"]
    if r:
        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1f}x"

        click.echo(f"raw/EPIC: latency p50 {fmt(r['latency_p50'])}, communication energy "
                   f"{fmt(r['energy_comm'])}, bytes {fmt(r['bytes'])} "
                   f"({published_ratios_text()})")
    if dropped:  # a run-time failure: one line, exit status 1 (the JSON has every detail)
        named = "; ".join(f"{name} gather {d['gather']}: {d['reason']}" for name, d in dropped)
        click.echo(f"epic: error: central dropped {len(dropped)} gathers ({named})", err=True)
        raise click.exceptions.Exit(1)


@click.command("report")
@click.argument("rundir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
def report_cmd(rundir, out_dir) -> None:
    """Write report.md and PNGs for RUNDIR's last replay."""
    from epic.report.testbed_report import write_report

    click.echo(f"wrote {write_report(rundir, out_dir)}")
