"""`epic pipeline --scale smoke`: the whole job (synthesise, train both models, evaluate,
export the int8 encoders, fine-tune EPIC's decoder against them) runs on the CPU, and a
second run resumes instead of redoing."""

import json

from epic_cli import main
from tests.conftest import requires_openfwi


@requires_openfwi
def test_smoke_pipeline_runs_end_to_end_and_resumes(tmp_path, openfwi_dir):
    out = tmp_path / "job"
    args = ["pipeline", "--scale", "smoke", "--out", str(out), "--openfwi", str(openfwi_dir),
            "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    row = results["datasets"]["flatvel-a"]
    assert set(row["models"]) == {"epic-seed0", "inversionnet-seed0", "epic-seed1",
                                  "epic-noprior-seed1"}
    for entry in row["models"].values():
        assert 0 < entry["test"]["mae"] < 2 and entry["test"]["samples"] == 8
        assert entry["budget"]["epochs"] == 2 and entry["budget"]["gathers"] == 16
    assert 0 < row["mean_map_mae"] < 1
    assert (out / "encoders" / "flatvel-a" / "device-1.tflite").is_file()
    assert "parity" in row["encoders"]
    tuned = row["finetuned"]  # the decoder fine-tuned against the int8 encoder (1 epoch)
    assert 0 < tuned["test"]["mae"] < 2 and tuned["config"]["epochs"] == 1
    parity = tuned["encoders"]["parity"]
    assert parity["checkpoint"] == tuned["checkpoint"] and parity["end_to_end"]["samples"] == 8
    ft_manifest = json.loads((out / "encoders" / "flatvel-a-int8ft" / "manifest.json")
                             .read_text())
    first = json.loads((out / "encoders" / "flatvel-a" / "manifest.json").read_text())
    assert ft_manifest["devices"][0]["sha256"] == first["devices"][0]["sha256"]  # same encoder

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.pt")}
    assert main(args) == 0  # everything is done: nothing is retrained
    again = json.loads((out / "results.json").read_text())
    assert again["datasets"]["flatvel-a"]["models"] == row["models"]
    logs = {p.parent.name: len((p.parent / "log.jsonl").read_text().splitlines())
            for p in stamps}
    assert logs == {**dict.fromkeys(row["models"], 2), "epic-seed0-int8ft": 1}


def test_pipeline_refuses_an_unknown_dataset_and_a_missing_maps_folder(tmp_path):
    assert main(["pipeline", "--scale", "smoke", "--out", str(tmp_path / "o"),
                 "--datasets", "nope"]) == 2
    assert main(["pipeline", "--scale", "smoke", "--out", str(tmp_path / "o"),
                 "--openfwi", str(tmp_path / "absent")]) == 2
    assert not (tmp_path / "o" / "results.json").exists()
