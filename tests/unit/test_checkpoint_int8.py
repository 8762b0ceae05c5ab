"""int8 per-channel weight storage of checkpoints (epic.models.checkpoint, weights="int8").

Real seeded models (a narrow InversionNet, a small EPIC model), real files, real ONNX Runtime.
Tolerances: a stored-and-reloaded weight is within half a quantisation step of its channel
(|w - q * scale| <= scale / 2, plus float32 rounding); the ONNX graph whose weights are the
int8 codes in the checkpoint (DequantizeLinear) matches the int8 torch model within 1e-4 per
map value on the normalised scale (the weights are the same float32 products in both).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from epic.errors import DataError, InputError
from epic.models.checkpoint import (
    FORMAT1,
    INT8_QMAX,
    convert_checkpoint,
    dequantize_per_channel,
    load_checkpoint,
    quantize_per_channel,
    save_checkpoint,
    weights_dtype,
)
from epic.models.registry import build_model
from epic.ship import INT8_MAE_BAR, check_storage, storage_record

REPO = Path(__file__).resolve().parents[2]
SHIPPED_INV = REPO / "artifacts" / "inversionnet-flatvel-a.pt"
EPIC_CONFIG = {"token_dim": 16, "encoder_width": 16, "dim": 32, "depth": 1, "heads": 2}
INV_CONFIG = {"dims": [8, 8, 16, 16, 32]}
MAX_ABS_TOL = 1e-4  # ONNX Runtime against torch, per map value, normalised scale


def _models():
    torch.manual_seed(0)
    epic = build_model("epic", **EPIC_CONFIG).eval()
    inv = build_model("inversionnet", **INV_CONFIG).eval()
    gen = torch.Generator().manual_seed(1)
    for m in inv.modules():  # BatchNorm statistics away from the 0 / 1 defaults
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.05, 0.05, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    return epic, inv


@pytest.fixture(scope="module")
def int8_checkpoints(tmp_path_factory):
    """The two models saved with weights="int8" (and their float32 originals)."""
    out = tmp_path_factory.mktemp("int8")
    epic, inv = _models()
    return {
        "epic": (epic, save_checkpoint(out / "epic.pt", epic, "epic", EPIC_CONFIG, "flatvel-a",
                                       weights="int8")),
        "inversionnet": (inv, save_checkpoint(out / "inv.pt", inv, "inversionnet", INV_CONFIG,
                                              "flatvel-a", weights="int8")),
    }


@pytest.mark.parametrize("kind", ["epic", "inversionnet"])
def test_int8_round_trip_within_half_a_step_per_channel(int8_checkpoints, kind):
    original, path = int8_checkpoints[kind]
    loaded, ckpt = load_checkpoint(path, expected_model=kind)
    assert ckpt["weights_dtype"] == "int8" and weights_dtype(ckpt) == "int8"
    # the file holds plain tensors: torch.load(weights_only=True) reads it
    raw = torch.load(path, map_location="cpu", weights_only=True)
    qweights, scales = raw["quant_weights"], raw["quant_scales"]
    params = {n for n, _ in original.named_parameters()}
    big = {n for n, p in original.named_parameters() if p.ndim >= 2}
    assert set(qweights) == big and big  # every conv / linear weight, and only those
    assert not set(qweights) & set(raw["state_dict"])
    want, got = original.state_dict(), loaded.state_dict()
    for k, q in qweights.items():
        s = scales[k]
        assert q.dtype == torch.int8 and q.shape == want[k].shape
        assert s.dtype == torch.float32 and s.shape == (q.shape[0],)
        assert int(q.abs().max()) <= INT8_QMAX
        err = (got[k] - want[k]).abs().reshape(q.shape[0], -1).amax(dim=1)
        # half a step, plus float32 rounding of w / s and q * s (|w| <= 127 s)
        assert (err <= 0.5 * s + 127 * s * 2.0**-22).all(), k
        # each channel's largest |w| is a full-scale code (the scale is not wasted); an
        # all-zero channel (EPIC's query embedding starts at zero) has codes 0 and scale 1
        top = q.reshape(q.shape[0], -1).abs().amax(dim=1)
        zero = want[k].reshape(q.shape[0], -1).abs().amax(dim=1) == 0
        assert (top[~zero] == INT8_QMAX).all() and (top[zero] == 0).all(), k
        assert (s[zero] == 1).all(), k
    for k, v in raw["state_dict"].items():  # biases, norms, buffers: float32, exact
        assert not v.is_floating_point() or v.dtype == torch.float32, k
        assert torch.equal(got[k], want[k]), k
    assert set(raw["state_dict"]) | set(qweights) == set(want)
    assert params <= set(want)
    assert all(v.dtype == torch.float32 for v in got.values() if v.is_floating_point())


def _tensor_bytes(path: Path) -> tuple[int, int]:
    """(bytes of all stored tensors, number of tensors) of a checkpoint."""
    raw = torch.load(path, weights_only=True)
    tensors = [*raw["state_dict"].values(), *raw.get("quant_weights", {}).values(),
               *raw.get("quant_scales", {}).values()]
    return sum(t.numel() * t.element_size() for t in tensors), len(tensors)


def test_int8_stores_one_byte_a_weight(int8_checkpoints, tmp_path):
    original, path = int8_checkpoints["inversionnet"]
    f32 = save_checkpoint(tmp_path / "f32.pt", original, "inversionnet", INV_CONFIG,
                          "flatvel-a")
    n_big = sum(p.numel() for p in original.parameters() if p.ndim >= 2)
    n_all = sum(t.numel() for t in original.state_dict().values() if t.is_floating_point())
    stored8, count8 = _tensor_bytes(path)
    stored32, _ = _tensor_bytes(f32)
    assert stored32 >= 4 * n_all
    # 1 byte a conv weight, 4 bytes a scale, a 1-D value or a buffer value
    channels = sum(p.shape[0] for p in original.parameters() if p.ndim >= 2)
    assert stored8 <= n_big + 4 * (n_all - n_big) + 4 * channels + 8 * count8
    assert stored8 < 0.27 * stored32
    # the file is those bytes plus zip and pickle overhead (< 1 kB a tensor)
    assert path.stat().st_size < stored8 + 1024 * count8


def test_int8_model_outputs_stay_close_to_float32(int8_checkpoints):
    """The whole model, not just the weights: real gathers-shaped input, relative output
    change of the narrow InversionNet and of the EPIC model below 2 % of the output spread."""
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 0.2, (2, 5, 1000, 70))
                         .astype(np.float32))
    for kind in ("inversionnet", "epic"):
        original, path = int8_checkpoints[kind]
        loaded, _ = load_checkpoint(path)
        with torch.no_grad():
            a, b = original(x), loaded(x)
        assert float((a - b).abs().max()) < 0.02 * float(a.max() - a.min()) + 1e-6, kind


def test_quantize_guards_zero_and_rejects_bad_tensors():
    w = torch.tensor([[0.0, 0.0], [0.5, -1.0], [1e-30, 0.0]])
    q, s = quantize_per_channel(w)
    assert s[0] == 1.0 and (q[0] == 0).all()  # an all-zero channel: scale 1, codes 0
    assert abs(int(q[1, 0]) - 63.5) == 0.5 and int(q[1, 1]) == -127  # 0.5 is 63.5 steps
    assert torch.allclose(dequantize_per_channel(q, s)[1], w[1], atol=float(s[1]) / 2)
    assert torch.isfinite(dequantize_per_channel(q, s)).all()
    with pytest.raises(InputError, match="ndim >= 2"):
        quantize_per_channel(torch.ones(4))
    with pytest.raises(InputError, match="inf/NaN"):
        quantize_per_channel(torch.tensor([[1.0, float("nan")]]))


def test_weights_argument_and_half_alias(tmp_path):
    _, inv = _models()
    path = save_checkpoint(tmp_path / "a" / "h.pt", inv, "inversionnet", INV_CONFIG,
                           "flatvel-a", half=True)
    raw = torch.load(path, weights_only=True)
    assert raw["weights_dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values()
               if v.is_floating_point())
    # the same file (torch names the zip's root folder after the file: same name, other folder)
    assert save_checkpoint(tmp_path / "b" / "h.pt", inv, "inversionnet", INV_CONFIG,
                           "flatvel-a", weights="float16").read_bytes() == path.read_bytes()
    with pytest.raises(InputError, match="contradicts"):
        save_checkpoint(tmp_path / "x.pt", inv, "inversionnet", INV_CONFIG, "flatvel-a",
                        half=True, weights="int8")
    with pytest.raises(InputError, match="weights must be one of"):
        save_checkpoint(tmp_path / "x.pt", inv, "inversionnet", INV_CONFIG, "flatvel-a",
                        weights="int4")
    assert not (tmp_path / "x.pt").exists()


def test_format1_float16_checkpoint_loads_unchanged(tmp_path):
    """A checkpoint as format 1 wrote it (float16 state_dict, no weights_dtype, the old
    EPIC defaults implied) still rebuilds its model with its float16 values."""
    torch.manual_seed(3)
    old = build_model("epic", **EPIC_CONFIG, decimate=1, head_widths=(128, 64, 32)).eval()
    state = {k: v.half() if v.is_floating_point() else v for k, v in old.state_dict().items()}
    torch.save({"format": FORMAT1, "model": "epic", "config": dict(EPIC_CONFIG),
                "state_dict": state, "dataset": "flatvel-a", "meta": {}}, tmp_path / "v1.pt")
    model, ckpt = load_checkpoint(tmp_path / "v1.pt", expected_model="epic")
    assert weights_dtype(ckpt) == "float16" and "weights_dtype" not in ckpt
    assert model.encoder.decimate == 1
    for k, v in model.state_dict().items():
        assert v.dtype == old.state_dict()[k].dtype, k
        assert torch.equal(v, state[k].to(v.dtype)), k
    # converted to int8, it rebuilds the same architecture under format 2
    conv = convert_checkpoint(tmp_path / "v1.pt", tmp_path / "v1-int8.pt", "int8")
    model8, ckpt8 = load_checkpoint(conv)
    assert ckpt8["config"]["decimate"] == 1 and model8.encoder.decimate == 1
    assert model8.state_dict().keys() == model.state_dict().keys()


def test_broken_int8_checkpoints_raise_data_error_with_path(int8_checkpoints, tmp_path):
    _, path = int8_checkpoints["inversionnet"]
    raw = torch.load(path, weights_only=True)
    key = next(iter(raw["quant_scales"]))
    cases = {
        "missing_scale": lambda r: r["quant_scales"].pop(key),
        "short_scale": lambda r: r["quant_scales"].__setitem__(key, r["quant_scales"][key][1:]),
        "float_codes": lambda r: r["quant_weights"].__setitem__(key,
                                                               r["quant_weights"][key].float()),
        "unknown_dtype": lambda r: r.__setitem__("weights_dtype", "int4"),
    }
    for name, breaks in cases.items():
        broken = torch.load(path, weights_only=True)
        breaks(broken)
        target = tmp_path / f"{name}.pt"
        torch.save(broken, target)
        with pytest.raises(DataError, match=re.escape(str(target))):
            load_checkpoint(target)
    # a reader that ignores quant_weights cannot load the codes as weights by mistake
    model = build_model("inversionnet", **INV_CONFIG)
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict(raw["state_dict"])


def test_storage_record_and_bar():
    full = {"mae": 0.1000, "rmse": 0.15, "ssim": 0.70}
    fine = storage_record(full, {"mae": 0.1009, "rmse": 0.151, "ssim": 0.699}, "int8")
    assert fine["test_change"]["mae_rel"] == pytest.approx(0.009)
    assert fine["weights_dtype"] == "int8" and fine["test_metrics_float32"] == full
    check_storage(fine)
    off = storage_record(full, {"mae": 0.1000 * (1 + INT8_MAE_BAR) + 1e-6, "rmse": 0.15,
                                "ssim": 0.7}, "int8")
    with pytest.raises(InputError, match="int8 changes the test MAE"):
        check_storage(off)
    with pytest.raises(InputError, match="float16 changes"):
        check_storage(storage_record(full, {**full, "mae": 0.1012}, "float16"))


@pytest.mark.skipif(not SHIPPED_INV.is_file(), reason="no shipped InversionNet")
def test_shipped_inversionnet_is_int8_with_consistent_codes():
    raw = torch.load(SHIPPED_INV, map_location="cpu", weights_only=True)
    if raw.get("weights_dtype") != "int8":
        pytest.skip("the shipped InversionNet is not stored in int8")
    assert len(raw["quant_weights"]) == 25  # 25 conv / transposed-conv weights
    for k, q in raw["quant_weights"].items():
        s = raw["quant_scales"][k]
        assert q.dtype == torch.int8 and s.shape == (q.shape[0],) and (s > 0).all(), k
    assert SHIPPED_INV.stat().st_size < 26e6


# ---- ONNX Runtime over graphs whose weights are the int8 codes inside the checkpoint ----


@pytest.fixture(scope="module")
def exported_int8(int8_checkpoints, tiny_dataset, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnxscript", reason="onnxscript (the 'export' extra) is not installed")
    from epic.export_decoders import export_decoders

    out = tmp_path_factory.mktemp("dec8") / "onnx"
    return export_decoders(int8_checkpoints["epic"][1], int8_checkpoints["inversionnet"][1],
                           out, test_dir=tiny_dataset, n_test=4, batch=3, timing_gathers=1,
                           command="pytest")


def test_int8_graphs_point_at_the_codes_and_dequantize(exported_int8, int8_checkpoints):
    import onnx

    manifest = json.loads(exported_int8.manifest_path.read_text())
    for kind in ("epic", "inversionnet"):
        _, ck = int8_checkpoints[kind]
        raw = torch.load(ck, weights_only=True)
        entry = manifest["models"][kind]
        weights = entry["weights"]
        assert weights["dtype"] == "int8" and weights["embedded"] == 0
        # every int8 weight of the exported part (EPIC: the decoder) is external, codes and
        # scale, and dequantised in the graph
        used = [k for k in raw["quant_weights"] if kind == "inversionnet"
                or k.startswith("decoder.")]
        assert weights["int8"] == len(used) > 0
        graph = onnx.load(exported_int8.out_dir / entry["file"], load_external_data=False)
        inits = {i.name: i for i in graph.graph.initializer}
        codes = [i for i in inits.values() if i.data_type == onnx.TensorProto.INT8]
        assert len(codes) == weights["int8"]
        assert all(i.data_location == onnx.TensorProto.EXTERNAL for i in inits.values())
        dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
        assert len(dq) == weights["int8"]
        for node in dq:
            assert [a.i for a in node.attribute if a.name == "axis"] == [0]
            assert inits[node.input[0]].data_type == onnx.TensorProto.INT8
            assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT
        # the bytes it points at are the stored codes
        node = dq[0]
        ext = {e.key: e.value for e in inits[node.input[0]].external_data}
        with open(ck, "rb") as f:
            f.seek(int(ext["offset"]))
            data = f.read(int(ext["length"]))
        stored = {q.numpy().tobytes() for q in raw["quant_weights"].values()}
        assert data in stored


def test_int8_onnx_runtime_matches_torch(exported_int8, int8_checkpoints, tiny_dataset):
    from epic.data.openfwi import OpenFWIDataset, get_dataset
    from epic.data.transforms import normalize_data
    from epic.inference import LatentDecoderRuntime, RawDecoderRuntime

    ds = OpenFWIDataset(tiny_dataset)
    spec = get_dataset("flatvel-a")
    x = normalize_data(np.stack([ds[i][0] for i in range(3)]), spec.data_min, spec.data_max)
    inv, _ = load_checkpoint(int8_checkpoints["inversionnet"][1])
    epic, _ = load_checkpoint(int8_checkpoints["epic"][1])
    present = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [0, 0, 1, 0, 1]], bool)
    with torch.no_grad():
        want_inv = inv(torch.from_numpy(x)).numpy()
        tokens = epic.encode(torch.from_numpy(x))
        want_epic = epic.decode(tokens, torch.from_numpy(present)).numpy()
    got_inv = RawDecoderRuntime(exported_int8.manifest_path).decode_normalised(x)
    got_epic = LatentDecoderRuntime(exported_int8.manifest_path).decode_normalised(
        tokens.numpy(), present)
    np.testing.assert_allclose(got_inv, want_inv, atol=MAX_ABS_TOL, rtol=0)
    np.testing.assert_allclose(got_epic, want_epic, atol=MAX_ABS_TOL, rtol=0)
    assert exported_int8.parity["inversionnet"]["map_max_abs_diff"] <= MAX_ABS_TOL
    assert json.loads(exported_int8.manifest_path.read_text())["parity"]["meets_target"]
