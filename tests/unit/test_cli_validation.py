"""Bad input found before anything is written, one-line errors, and what `epic simulate` says
about topologies the shipped models cannot run (issue 11, sections 4 and 5)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from emulation.simulate import shipped_model_fit
from emulation.sweeps import check_sweep, sweep
from epic.data.openfwi import read_velocity_maps
from epic.errors import InputError
from epic.topology import load_topology
from epic_cli import main

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_line_error(status: int, err: str) -> None:
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("epic: error: "), err
    assert "Traceback" not in err, err


@pytest.mark.parametrize(("sweep_arg", "message"), [
    ("bandwidth_bps=-1,1e6", "sweep bandwidth_bps=-1"),
    ("loss=0.1,2", "sweep loss=2"),
    ("devices=0,2", "sweep devices=0: must be >= 1"),
    ("devices=2,2.5", "sweep devices=2.5: must be a whole number"),
    ("latent_frame_bytes=972,0", "sweep latent_frame_bytes=0"),
])
def test_simulate_checks_every_sweep_point_before_writing(tmp_path, capsys, sweep_arg,
                                                          message):
    out = tmp_path / "out" / "result.json"
    status, _, err = _run(capsys, "simulate", "--topology", str(REPO / "topology.yaml"),
                          "--shots", "1", "--json", str(out), "--sweep", sweep_arg)
    _one_line_error(status, err)
    assert message in err, err
    assert not (tmp_path / "out").exists()  # neither the JSON nor the sweep's CSV/PNG


def test_sweep_checks_all_values_before_its_first_file(tmp_path):
    topology = load_topology(REPO / "topology.yaml")
    check_sweep(topology, "devices", (1.0, 1000.0))  # a 1,000-device what-if is fine
    with pytest.raises(InputError, match="loss=2"):
        sweep(topology, "loss", (0.0, 2.0), tmp_path / "s", shots=1)
    assert not (tmp_path / "s").exists()


def _topology_with(tmp_path: Path, receivers: str) -> tuple[Path, int]:
    text = (REPO / "topology.yaml").read_text()
    assert text.count("receivers: [56, 70]") == 1
    path = tmp_path / "topology.yaml"
    path.write_text(text.replace("receivers: [56, 70]", f"receivers: {receivers}"))
    return path, 1 + text[: text.index("receivers: [56, 70]")].count("\n")


@pytest.mark.parametrize("receivers", ["[56, 84]", "[56, 66]"])
def test_simulate_models_any_layout_but_says_the_shipped_models_cannot_run_it(
        tmp_path, capsys, receivers):
    path, line = _topology_with(tmp_path, receivers)
    out = tmp_path / "r.json"
    status, stdout, err = _run(capsys, "simulate", "--topology", str(path), "--mode", "epic",
                               "--shots", "2", "--json", str(out))
    assert status == 0, err
    where = f"{path}:{line}: devices[4].receivers: not one of the 5 slots of 14 receivers"
    note = [ln for ln in stdout.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "could not run on the shipped models" in note[0], stdout
    assert where in note[0] and f"got {receivers}" in note[0], note
    fit = json.loads(out.read_text())["shipped_models"]
    assert fit["fits"] is False and fit["slots"] == {"n_devices": 5, "rx_per_device": 14}
    assert len(fit["problems"]) == 1 and fit["problems"][0].startswith(where), fit


def test_simulate_of_the_default_topology_fits_the_shipped_models(tmp_path, capsys):
    out = tmp_path / "r.json"
    status, stdout, err = _run(capsys, "simulate", "--topology", str(REPO / "topology.yaml"),
                               "--mode", "epic", "--shots", "1", "--json", str(out))
    assert status == 0, err
    assert "note:" not in stdout
    fit = json.loads(out.read_text())["shipped_models"]
    assert fit["fits"] is True and fit["problems"] == []
    manifest = json.loads((REPO / "artifacts/encoders/epic-flatvel-a/manifest.json").read_text())
    assert fit["slots"] == {k: manifest[k] for k in ("n_devices", "rx_per_device")}
    assert shipped_model_fit(load_topology(REPO / "topology.yaml"), manifest=tmp_path / "no") \
        is None  # no manifest: the fit is unknown, the simulation still runs


@pytest.mark.parametrize("content", [b"garbage, not a checkpoint", b"", b"PK\x03\x04trunc"])
def test_evaluate_with_a_corrupt_checkpoint_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(content)
    out = tmp_path / "e.json"
    status, _, err = _run(capsys, "evaluate", "--model", "epic", "--checkpoint", str(bad),
                          "--data", str(tmp_path), "--out", str(out))  # read after the model
    _one_line_error(status, err)
    assert f"{bad}: not a readable checkpoint" in err and "weights_only" not in err, err
    assert not out.exists()


def test_garbage_npy_is_called_what_it_is(tmp_path, capsys):
    archive = tmp_path / "maps.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model1.npy", b"this is not an array" * 10)
    loose = tmp_path / "maps.npy"
    loose.write_bytes(b"this is not an array either")
    for maps, source in ((archive, f"{archive}:model1.npy"), (loose, str(loose))):
        out = tmp_path / "ds"
        status, _, err = _run(capsys, "data", "synth", "--dataset", "flatvel-a", "--count", "1",
                              "--maps", str(maps), "--out", str(out), "--no-progress")
        _one_line_error(status, err)
        assert f"{source}: not a readable .npy file (it does not start with the \\x93NUMPY " \
               f"magic; its first bytes are b'this is " in err and "pickled" not in err, err
        assert not out.exists()
    real = np.full((1, 1, 70, 70), 2000.0, np.float32)  # real ones still load, both ways
    np.save(tmp_path / "real.npy", real)
    with zipfile.ZipFile(tmp_path / "real.zip", "w") as z:
        z.write(tmp_path / "real.npy", "model1.npy")
    for name in ("real.npy", "real.zip"):
        assert np.array_equal(read_velocity_maps(tmp_path / name), real)


def test_docker_up_checks_receivers_before_touching_the_engine(tmp_path):
    from emulation.runtime import DockerRuntime
    from epic.topology import TopologyError

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the engine was used ({name}) before the checks")

    path, line = _topology_with(tmp_path, "[56, 84]")
    with pytest.raises(TopologyError, match=rf"^{path}:{line}: devices\[4\]\.receivers: not one"):
        DockerRuntime(tmp_path / "run", client=Untouchable()).up(path, timeout_s=5)
    assert not (tmp_path / "run").exists()
