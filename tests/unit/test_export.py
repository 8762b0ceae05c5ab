"""epic.export: a small seeded EPIC model exported to int8 TFLite and run in the real LiteRT
interpreter (exports are module-scoped: a few seconds each)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="litert-torch (the 'export' extra) is not installed")
from ai_edge_litert.interpreter import Interpreter

from epic.data.openfwi import OpenFWIDataset, get_dataset
from epic.data.transforms import normalize_data
from epic.errors import DataError, InputError
from epic.export import export_encoders, sha256_file
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.models.registry import build_model
from epic.quantize import bias_corrected, quantize_encoder

CONFIG = {"token_dim": 16, "encoder_width": 16, "dim": 32, "depth": 1, "heads": 2}
RX = 14  # receivers per device
LATENT_RMSE_REL_TOL = 0.05  # int8 (LiteRT) vs float (torch) latent: RMSE / latent std
LATENT_COSINE_TOL = 0.995  # and the cosine similarity of each sample's latent


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small randomly initialised (seeded) EPIC model with non-trivial BatchNorm stats."""
    torch.manual_seed(0)
    model = build_model("epic", **CONFIG).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.05, 0.05, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_checkpoint(path, model, "epic", CONFIG, "flatvel-a")


@pytest.fixture(scope="module")
def exported(checkpoint, tiny_dataset, tmp_path_factory):
    """Devices 1 and 4 exported fully int8 (the default), parity on the tiny set."""
    out = tmp_path_factory.mktemp("enc") / "int8"
    return export_encoders(checkpoint, tiny_dataset, out, n_calibration=6,
                           test_dir=tiny_dataset, devices=(4, 1), threads=1)


@pytest.fixture(scope="module")
def exported_float_stem(checkpoint, tiny_dataset, tmp_path_factory):
    """Device 2 exported with a float first block, parity on the calibration gathers."""
    out = tmp_path_factory.mktemp("enc") / "float-stem"
    return export_encoders(checkpoint, tiny_dataset, out, n_calibration=6, devices=(2,),
                           threads=1, float_stem=True)


def _interpreter(path) -> Interpreter:
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def _run(it: Interpreter, x: np.ndarray) -> np.ndarray:
    """Normalised ``(5, 1000, 14)`` -> dequantised ``(14, token_dim)`` from the interpreter."""
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    if inp["dtype"] == np.int8:
        s, z = inp["quantization"]
        x = np.clip(np.rint(x / s) + z, -128, 127).astype(np.int8)
    it.set_tensor(inp["index"], np.ascontiguousarray(x[None]))
    it.invoke()
    s, z = out["quantization"]
    return (it.get_tensor(out["index"])[0].astype(np.float32) - z) * s


def _gathers(directory, device: int) -> np.ndarray:
    """All gathers of ``directory``, normalised, receivers of ``device``: (N, 5, 1000, 14)."""
    spec = get_dataset("flatvel-a")
    ds = OpenFWIDataset(directory)
    x = np.stack([normalize_data(ds[i][0], spec.data_min, spec.data_max) for i in range(len(ds))])
    return np.ascontiguousarray(x[..., (device - 1) * RX:device * RX])


def _conv_tensors(it: Interpreter) -> list[tuple[dict, dict]]:
    """(weight, bias) tensor details of every CONV_2D op, in graph order."""
    details = {d["index"]: d for d in it.get_tensor_details()}
    return [(details[op["inputs"][1]], details[op["inputs"][2]])
            for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]


def test_manifest_describes_every_file(exported):
    manifest = json.loads(exported.manifest_path.read_text())
    assert [e["device_id"] for e in manifest["devices"]] == [1, 4]
    assert [p.name for p in exported.encoder_paths] == ["device-1.tflite", "device-4.tflite"]
    for entry, path in zip(manifest["devices"], exported.encoder_paths, strict=True):
        assert entry["sha256"] == sha256_file(path)
        assert entry["size_bytes"] == path.stat().st_size > 0
        it = _interpreter(path)
        out = it.get_output_details()[0]
        assert entry["output"]["scale"] == pytest.approx(out["quantization"][0])
        assert entry["output"]["zero_point"] == out["quantization"][1]
        assert entry["input"]["shape"] == [1, 5, 1000, RX]
        assert entry["receivers"] == [(entry["device_id"] - 1) * RX, entry["device_id"] * RX]
    assert manifest["versions"]["litert-torch"] == "0.10.0"
    assert manifest["calibration"]["samples"] == 6
    norm = manifest["normalisation"]
    assert (norm["data_min"], norm["data_max"]) == (-26.95, 52.77)
    assert "(HistogramObserver; the input MinMaxObserver)" in manifest["quantisation"][
        "activations"]
    assert manifest["quantisation"]["bias_correction"].startswith("per latent channel")
    for entry in manifest["devices"]:  # the mean int8 error per channel, removed
        bc = entry["bias_correction"]
        assert len(bc["latent_shift_per_channel"]) == CONFIG["token_dim"]
        assert bc["mean_error_rms_after"] < bc["mean_error_rms_before"]


@pytest.mark.parametrize("device", [1, 4])
def test_litert_latent_matches_torch(exported, checkpoint, tiny_dataset, device):
    """Tolerance: RMSE <= 5 % of the latent's std, cosine >= 0.995 per gather."""
    model, _ = load_checkpoint(checkpoint)
    x = _gathers(tiny_dataset, device)
    with torch.no_grad():
        ref = model.encoder(torch.from_numpy(x)).numpy()  # (N, 14, 16)
    it = _interpreter(exported.out_dir / f"device-{device}.tflite")
    got = np.stack([_run(it, s) for s in x])
    assert got.shape == ref.shape == (len(x), RX, CONFIG["token_dim"])
    rmse = np.sqrt(((got - ref) ** 2).mean())
    assert rmse <= LATENT_RMSE_REL_TOL * ref.std(), (rmse, ref.std())
    cos = (got * ref).sum(axis=(1, 2)) / (np.linalg.norm(got, axis=(1, 2))
                                          * np.linalg.norm(ref, axis=(1, 2)))
    assert cos.min() >= LATENT_COSINE_TOL


def test_litert_matches_pt2e_reference_within_one_step(exported, checkpoint, tiny_dataset):
    """LiteRT runs the same integer model as torch's PT2E Q/DQ graph: latents agree to a
    few output steps (rounding differs between the two)."""
    model, _ = load_checkpoint(checkpoint)
    manifest = json.loads(exported.manifest_path.read_text())
    x = _gathers(tiny_dataset, 4)
    entry = next(e for e in manifest["devices"] if e["device_id"] == 4)
    encoder = bias_corrected(model.encoder,
                             np.array(entry["bias_correction"]["latent_shift_per_channel"]))
    graph, _ = quantize_encoder(encoder, x[manifest["calibration"]["indices"]],
                                input_anchor=manifest["quantisation"]["input_anchor"])
    it = _interpreter(exported.out_dir / "device-4.tflite")
    step = it.get_output_details()[0]["quantization"][0]
    with torch.no_grad():
        ref = np.concatenate([graph(torch.from_numpy(s[None])).numpy() for s in x])
    got = np.stack([_run(it, s) for s in x])
    diff_steps = np.abs(got - ref) / step
    assert np.quantile(diff_steps, 0.99) <= 1.01
    assert diff_steps.max() <= 4.01


def test_fully_int8_model_has_only_int8_tensors(exported):
    it = _interpreter(exported.encoder_paths[0])
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert inp["quantization"][0] > 0 and out["quantization"][0] > 0
    silence = float(normalize_data(np.zeros(1, np.float32), -26.95, 52.77)[0])
    steps = silence / inp["quantization"][0] + inp["quantization"][1]
    assert abs(steps - round(steps)) < 1e-4  # zero amplitude is exactly representable
    manifest = json.loads(exported.manifest_path.read_text())
    assert manifest["quantisation"]["input_anchor"] == pytest.approx(silence)
    dtypes = {d["dtype"] for d in it.get_tensor_details()}
    assert dtypes <= {np.int8, np.int32}, dtypes  # int32: biases and shape constants
    convs = _conv_tensors(it)
    assert len(convs) == 8
    for weight, bias in convs:
        q = weight["quantization_parameters"]
        assert weight["dtype"] == np.int8 and bias["dtype"] == np.int32
        assert len(q["scales"]) == weight["shape"][0] > 1  # per output channel
        assert not q["zero_points"].any()  # symmetric


def test_float_stem_model_is_int8_after_the_first_conv(exported_float_stem):
    it = _interpreter(exported_float_stem.encoder_paths[0])
    assert it.get_input_details()[0]["dtype"] == np.float32
    out = it.get_output_details()[0]
    assert out["dtype"] == np.int8 and out["quantization"][0] > 0
    (w0, b0), *rest = _conv_tensors(it)
    assert w0["dtype"] == np.float32 and b0["dtype"] == np.float32
    assert len(rest) == 7
    for weight, bias in rest:
        assert weight["dtype"] == np.int8 and bias["dtype"] == np.int32
        assert len(weight["quantization_parameters"]["scales"]) == weight["shape"][0]
    # float32 only in the stem: the input, the fixed Decimator (its layout changes, kernel,
    # output) and the first block (body.0: weight, bias, output); everything after is int8
    floats = [d["name"] for d in it.get_tensor_details() if d["dtype"] == np.float32]
    assert floats and all(name.startswith("serving_default") or "Decimator_decimator" in name
                          or "Sequential_body/torch.nn.modules.container.Sequential_0/" in name
                          for name in floats), floats
    assert len(floats) <= 9
    parity = exported_float_stem.parity
    assert parity["data_role"] == "calibration" and "end_to_end" not in parity
    assert parity["latent"]["device-2"]["cosine_min"] >= LATENT_COSINE_TOL


def test_parity_report(exported):
    parity = json.loads(exported.parity_path.read_text())
    assert parity == exported.parity
    assert set(parity["latent"]) == {"device-1", "device-4"}
    for err in parity["latent"].values():
        assert err["samples"] == 8
        assert err["cosine_min"] >= LATENT_COSINE_TOL
        assert 0 <= err["rmse_rel_std"] <= LATENT_RMSE_REL_TOL
    e2e = parity["end_to_end"]
    assert e2e["samples"] == 8 and e2e["int8_devices"] == [1, 4]
    growth = e2e["int8_encoders"]["mae"] / e2e["float"]["mae"] - 1
    assert e2e["mae_relative_growth"] == pytest.approx(growth)
    assert e2e["meets_target"] == (abs(growth) <= 0.02)
    assert abs(growth) < 0.2  # an untrained model; the shipped figure is in docs/edge.md


def test_bad_arguments(checkpoint, tiny_dataset, tmp_path):
    with pytest.raises(InputError, match="n_calibration must be >= 1, got 0"):
        export_encoders(checkpoint, tiny_dataset, tmp_path, n_calibration=0)
    with pytest.raises(DataError, match="no such checkpoint"):
        export_encoders(tmp_path / "nope.pt", tiny_dataset, tmp_path)
    with pytest.raises(InputError, match=r"devices \[6\]"):
        export_encoders(checkpoint, tiny_dataset, tmp_path, devices=(1, 6))
    with pytest.raises(DataError, match="no such directory"):
        export_encoders(checkpoint, tmp_path / "missing", tmp_path)
    card = json.loads((tiny_dataset / "card.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_dataset.glob("*.npy"):
        (other / f.name).symlink_to(f)
    (other / "card.json").write_text(json.dumps(card | {"dataset": "curvefault-b"}))
    with pytest.raises(DataError, match="curvefault-b"):
        export_encoders(checkpoint, other, tmp_path)
