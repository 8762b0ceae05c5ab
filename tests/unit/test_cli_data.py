"""`epic data synth|info|plot`: the contract commands, and one-line errors for bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from epic.data.openfwi import OpenFWIDataset
from epic_cli import main
from tests.conftest import requires_openfwi


def _epic(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "epic_cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_synth_from_maps_writes_openfwi_layout_and_card(tmp_path, velocity_npy, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", "--dataset", "flatvel-a", "--count", "2", "--seed", "3",
                 "--out", str(out), "--maps", str(velocity_npy), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "data1.npy", "model1.npy"]
    data = np.load(out / "data1.npy")
    assert data.shape == (2, 5, 1000, 70) and data.dtype == np.float32
    assert np.array_equal(np.load(out / "model1.npy"), np.load(velocity_npy)[:2])
    card = json.loads((out / "card.json").read_text())
    assert card["dataset"] == "flatvel-a" and card["count"] == 2 and card["seed"] == 3
    assert card["generator"] == {"kind": "maps", "source": str(velocity_npy), "first": 2}
    assert card["versions"]["deepwave"] == "0.1.0"
    assert card["observed"]["data_max"] == pytest.approx(float(data.max()))
    assert not list(tmp_path.glob(".ds.tmp-*"))
    assert "wrote 2 FlatVel-A gathers" in capsys.readouterr().out

    assert main(["data", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 samples in 1 shard" in printed and "(2, 5, 1000, 70)" in printed
    assert main(["data", "plot", str(out), "--index", "1", "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_generated_fault_family_uses_seis_vel_names_and_shards(tmp_path):
    out = tmp_path / "cf"
    assert main(["data", "synth", "--dataset", "curvefault-b", "--count", "3", "--seed", "1",
                 "--out", str(out), "--no-progress"]) == 0
    ds = OpenFWIDataset(out)
    assert len(ds) == 3 and (out / "seis1.npy").is_file() and (out / "vel1.npy").is_file()
    _, velocity = ds[0]
    assert 1500.0 <= velocity.min() and velocity.max() <= 4500.0


@requires_openfwi
def test_synth_from_real_zip(tmp_path, openfwi_dir):
    out = tmp_path / "real"
    assert main(["data", "synth", "--dataset", "flatvel-a", "--count", "1", "--out", str(out),
                 "--maps", str(openfwi_dir / "FlatVelA_test.zip"), "--no-progress"]) == 0
    gather, _ = OpenFWIDataset(out)[0]
    assert -40 < gather.min() < 0 < gather.max() < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "marmousi", "--count", "2"], "unknown dataset 'marmousi'"),
        (["--dataset", "flatvel-a", "--count", "0"], "--count must be a positive integer, got 0"),
        (["--dataset", "flatvel-a", "--count", "-3"], "got -3"),
        (["--dataset", "flatvel-a", "--count", "2", "--maps", "/no/such.zip"],
         "/no/such.zip: no such file"),
    ],
)
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    result = _epic("data", "synth", *args, "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_nan_maps_and_zip_without_npy_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.npy"
    maps = np.full((2, 1, 70, 70), 2000.0, np.float32)
    maps[1, 0, 5, 5] = np.nan
    np.save(bad, maps)
    result = _epic("data", "synth", "--dataset", "flatvel-a", "--count", "2", "--maps", str(bad),
                   "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and f"{bad}: sample 1 contains NaN or Inf" in result.stderr
    import zipfile

    with zipfile.ZipFile(tmp_path / "e.zip", "w") as z:
        z.writestr("a.txt", "x")
    result = _epic("data", "synth", "--dataset", "flatvel-a", "--count", "1", "--maps",
                   str(tmp_path / "e.zip"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "holds no .npy files" in result.stderr
    assert not (tmp_path / "o").exists()


def test_refuses_to_mix_with_existing_shards(tmp_path, velocity_npy):
    out = tmp_path / "ds"
    args = ["data", "synth", "--dataset", "flatvel-a", "--count", "1", "--out", str(out),
            "--maps", str(velocity_npy), "--no-progress"]
    assert main(args) == 0
    before = (out / "data1.npy").read_bytes()
    assert main(args) == 2
    assert (out / "data1.npy").read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


def test_info_on_missing_directory_is_one_line(tmp_path):
    result = _epic("data", "info", str(tmp_path / "nope"))
    assert result.returncode == 2 and "no such directory" in result.stderr
    assert "Traceback" not in result.stderr


def _synth_args(out, maps, count: int, *extra: str) -> list[str]:
    return ["data", "synth", "--dataset", "flatvel-a", "--count", str(count), "--out", str(out),
            "--maps", str(maps), "--no-progress", "--threads", "1", "--batch", "1", *extra]


def test_killed_synthesis_resumes_where_it_stopped_and_matches_an_uninterrupted_run(
        tmp_path, velocity_npy):
    """SIGKILL mid-job leaves finished pieces in .OUT.partial; the same command continues
    from them, and the result is byte-identical to a run that was never interrupted."""
    import signal
    import time

    maps = np.concatenate([np.load(velocity_npy)] * 3)  # 6 maps -> 6 pieces of 1
    maps_path = tmp_path / "maps.npy"
    np.save(maps_path, maps)
    out = tmp_path / "ds"
    partial = tmp_path / ".ds.partial"
    args = _synth_args(out, maps_path, 6, "--piece-size", "1")
    proc = subprocess.Popen([sys.executable, "-m", "epic_cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(partial.glob("piece-*.npy")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no piece finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = len(list(partial.glob("piece-*.npy")))
    assert 1 <= finished < 6 and not out.exists()

    resumed = _epic(*args)
    assert resumed.returncode == 0, resumed.stderr
    card = json.loads((out / "card.json").read_text())
    assert card["resumed_from_gathers"] >= finished and card["count"] == 6
    assert not partial.exists()

    fresh = tmp_path / "fresh"
    assert main(_synth_args(fresh, maps_path, 6)) == 0
    for name in ("data1.npy", "model1.npy"):
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name


def test_partial_job_of_another_spec_is_refused_and_kept(tmp_path, velocity_npy):
    out = tmp_path / "ds"
    partial = tmp_path / ".ds.partial"
    partial.mkdir()
    (partial / "job.json").write_text(json.dumps({"dataset": "flatvel-a", "count": 99}))
    result = _epic(*_synth_args(out, velocity_npy, 2))
    assert result.returncode == 2
    assert "partial synthesis of another job" in result.stderr and "count" in result.stderr
    assert (partial / "job.json").is_file() and not out.exists()
    assert main([*_synth_args(out, velocity_npy, 2), "--overwrite"]) == 0
    assert not partial.exists() and (out / "data1.npy").is_file()


def test_parallel_workers_write_what_one_process_writes(tmp_path, velocity_npy):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_synth_args(one, velocity_npy, 2, "--piece-size", "1")) == 0
    assert main(_synth_args(two, velocity_npy, 2, "--piece-size", "1", "--workers", "2")) == 0
    assert (one / "data1.npy").read_bytes() == (two / "data1.npy").read_bytes()
    assert json.loads((two / "card.json").read_text())["workers"] == 2


@pytest.mark.parametrize("args, message", [
    (["--device", "tpu"], "expected cpu, cuda or cuda:N"),
    (["--workers", "0"], "--workers must be a positive integer"),
])
def test_bad_device_and_workers_are_one_line_errors(tmp_path, velocity_npy, args, message):
    result = _epic(*_synth_args(tmp_path / "o", velocity_npy, 1), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()
