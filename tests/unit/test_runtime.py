"""devices.runtime: the torch-free encoder runtime, run in the real LiteRT interpreter, and the
device packaging (requirements, Dockerfile), checked statically."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest

from devices.runtime import (
    BackendUnavailableError,
    EncoderRuntime,
    GatherError,
    Latent,
    ModelFileError,
    ModelShapeError,
)
from epic.data.openfwi import OpenFWIDataset
from epic.data.transforms import normalize_data
from epic.errors import DataError, InputError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "artifacts" / "encoders" / "epic-flatvel-a" / "manifest.json"
DEVICE = 3
RX = 14
CONFIG = {"token_dim": 16, "encoder_width": 16, "dim": 32, "depth": 1, "heads": 2}
LATENT_RMSE_REL_TOL = 0.1  # fully int8 (input too) vs float torch: RMSE / latent std


def _export(tiny_dataset, tmp: Path, float_stem: bool):
    """A small seeded EPIC model with device 3 exported; ``(manifest path, torch encoder)``."""
    pytest.importorskip("litert_torch", reason="litert-torch (the 'export' extra) is missing")
    import torch

    from epic.export import export_encoders
    from epic.models.checkpoint import save_checkpoint
    from epic.models.registry import build_model

    torch.manual_seed(3)
    model = build_model("epic", **CONFIG).eval()
    ckpt = save_checkpoint(tmp / "model.pt", model, "epic", CONFIG, "flatvel-a")
    result = export_encoders(ckpt, tiny_dataset, tmp / "enc", n_calibration=4,
                             devices=(DEVICE,), threads=1, float_stem=float_stem)
    return result.manifest_path, model.encoder


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    """Fully int8 (int8 input: the runtime quantises with the model's input scale)."""
    return _export(tiny_dataset, tmp_path_factory.mktemp("runtime"), float_stem=False)


@pytest.fixture(scope="module")
def exported_float_stem(tiny_dataset, tmp_path_factory):
    """Float32 input and first block (the runtime feeds the normalised gather)."""
    return _export(tiny_dataset, tmp_path_factory.mktemp("runtime"), float_stem=True)


@pytest.fixture(scope="module")
def gathers(tiny_dataset) -> np.ndarray:
    """Raw amplitudes of device 3's receivers: (8, 5, 1000, 14) float32."""
    ds = OpenFWIDataset(tiny_dataset)
    return np.stack([ds[i][0][..., (DEVICE - 1) * RX:DEVICE * RX] for i in range(len(ds))])


@pytest.fixture
def model_path(exported) -> Path:
    return exported[0].parent / f"device-{DEVICE}.tflite"


@pytest.mark.parametrize("variant", ["exported", "exported_float_stem"])
def test_encodes_like_torch_and_reads_quantisation_from_model(variant, gathers, request):
    import torch

    manifest_path, encoder = request.getfixturevalue(variant)
    entry = json.loads(manifest_path.read_text())["devices"][0]
    rt = EncoderRuntime.from_manifest(manifest_path, DEVICE)
    assert rt.backend == "ai-edge-litert"
    assert rt.input_dtype == (np.float32 if variant == "exported_float_stem" else np.int8)
    assert np.dtype(rt.input_dtype).name == entry["input"]["dtype"]
    assert (rt.input_scale, rt.input_zero_point) == (
        pytest.approx(entry["input"]["scale"]), entry["input"]["zero_point"])
    assert rt.output_scale == pytest.approx(entry["output"]["scale"])
    latents = [rt.encode(g) for g in gathers]
    for lat in latents:
        assert isinstance(lat, Latent)
        assert lat.values.dtype == np.int8 and lat.values.shape == (RX, CONFIG["token_dim"])
        assert (lat.scale, lat.zero_point) == (rt.output_scale, rt.output_zero_point)
    got = np.stack([rt.dequantize(lat) for lat in latents])
    x = normalize_data(gathers, -26.95, 52.77)
    with torch.no_grad():
        ref = encoder(torch.from_numpy(x)).numpy()
    rmse = np.sqrt(((got - ref) ** 2).mean())
    assert rmse <= LATENT_RMSE_REL_TOL * ref.std(), (rmse, ref.std())


def test_normalisation_is_the_training_one(model_path, gathers):
    """Different data bounds give a different latent: the constructor's bounds are used."""
    rt = EncoderRuntime(model_path)
    other = EncoderRuntime(model_path, data_min=-10.0, data_max=20.0)
    assert not np.array_equal(rt.encode(gathers[0]).values, other.encode(gathers[0]).values)


def test_rejects_nan_and_inf(model_path, gathers):
    rt = EncoderRuntime(model_path)
    for bad in (np.nan, np.inf, -np.inf):
        g = gathers[0].copy()
        g[2, 500, 7] = bad
        with pytest.raises(GatherError, match=r"1 non-finite .* shot 2, sample 500, receiver 7"):
            rt.encode(g)
    assert issubclass(GatherError, InputError)


def test_rejects_wrong_gather_shape_and_dtype(model_path, gathers):
    rt = EncoderRuntime(model_path)
    with pytest.raises(GatherError, match=r"gather shape \(5, 1000, 13\), expected"):
        rt.encode(gathers[0][..., :13])
    with pytest.raises(GatherError, match="dtype int16"):
        rt.encode(gathers[0].astype(np.int16))


def test_model_shape_must_fit_the_receivers(model_path):
    with pytest.raises(ModelShapeError,
                       match=r"\(1, 5, 1000, 14\) does not fit .*\(10 receivers\)"):
        EncoderRuntime(model_path, n_receivers=10)
    with pytest.raises(ModelShapeError, match="500"):
        EncoderRuntime(model_path, n_samples=500)


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer" * 8, "truncate"])
def test_corrupt_model_names_the_file(model_path, tmp_path, content):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(model_path.read_bytes()[:4096] if content == "truncate" else content)
    with pytest.raises(ModelFileError, match=re.escape(str(bad))) as info:
        EncoderRuntime(bad)
    assert isinstance(info.value, DataError)


def test_missing_model_and_bad_arguments(model_path, tmp_path):
    with pytest.raises(ModelFileError, match=f"{re.escape(str(tmp_path))}.*no such model"):
        EncoderRuntime(tmp_path / "device-9.tflite")
    with pytest.raises(InputError, match="num_threads must be an int >= 1, got 0"):
        EncoderRuntime(model_path, num_threads=0)
    with pytest.raises(InputError, match="data_min < data_max"):
        EncoderRuntime(model_path, data_min=5.0, data_max=1.0)


def test_manifest_checks_sha256_and_device(exported, tmp_path):
    manifest_path = exported[0]
    copy = tmp_path / "enc"
    shutil.copytree(manifest_path.parent, copy)
    with pytest.raises(InputError, match=r"no encoder for device 5 \(has \[3\]\)"):
        EncoderRuntime.from_manifest(copy / "manifest.json", 5)
    model = copy / f"device-{DEVICE}.tflite"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 .* differs from the manifest"):
        EncoderRuntime.from_manifest(copy / "manifest.json", DEVICE)
    with pytest.raises(ModelFileError, match="no such manifest"):
        EncoderRuntime.from_manifest(tmp_path / "none.json", DEVICE)


def test_falls_back_to_tflite_runtime(model_path, gathers, monkeypatch):
    from ai_edge_litert.interpreter import Interpreter

    expected = EncoderRuntime(model_path).encode(gathers[0]).values
    fake = types.ModuleType("tflite_runtime")
    fake.interpreter = types.ModuleType("tflite_runtime.interpreter")
    fake.interpreter.Interpreter = Interpreter
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake.interpreter)
    rt = EncoderRuntime(model_path)
    assert rt.backend == "tflite-runtime"
    np.testing.assert_array_equal(rt.encode(gathers[0]).values, expected)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(BackendUnavailableError, match="ai-edge-litert .* tflite-runtime"):
        EncoderRuntime(model_path)


def test_device_side_imports_no_torch(model_path):
    """Load and encode in a fresh interpreter where ``import torch`` raises."""
    code = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is forbidden on the device")
                return None
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import devices.runtime, epic.data.transforms, epic.errors
        rt = devices.runtime.EncoderRuntime({str(model_path)!r})
        lat = rt.encode(np.zeros((5, 1000, 14), np.float32))
        assert lat.values.dtype == np.int8
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok", rt.backend)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["ok", "ai-edge-litert"]


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"no shipped encoders at {SHIPPED}")
def test_shipped_encoders_load_and_encode(gathers):
    manifest = json.loads(SHIPPED.read_text())
    assert [e["device_id"] for e in manifest["devices"]] == [1, 2, 3, 4, 5]
    for entry in manifest["devices"]:
        rt = EncoderRuntime.from_manifest(SHIPPED, entry["device_id"])  # checks sha256
        assert rt.latent_shape == (RX, manifest["token_dim"])
        lat = rt.encode(gathers[0])
        assert lat.values.dtype == np.int8 and lat.scale == entry["output"]["scale"]


def test_requirements_pin_pyproject_versions_and_no_torch():
    pins = {}
    for line in (REPO / "devices" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"unpinned requirement {line!r}"
            pins[name.lower()] = ver
    assert set(pins) == {"numpy", "paho-mqtt", "ai-edge-litert", "pyyaml", "pydantic"}
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    project = {d.split("==")[0].lower(): d.split("==")[1].split(";")[0].strip() for d in deps}
    for name, ver in pins.items():
        assert project[name] == ver, name
    assert "torch" not in pins


def test_dockerfile_is_slim_and_installs_exactly_the_requirements():
    text = (REPO / "devices" / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[:2] == ["ARG BASE=python:3.11-slim", "FROM ${BASE}"]  # slim by default
    installs = [ln for ln in lines if "pip install" in ln]
    # one venv install of the pinned requirements (copied in as devices/requirements*.txt)
    assert installs and all("/tmp/requirements" in ln for ln in installs), installs
    assert "COPY devices/requirements*.txt /tmp/" in lines
    assert not [ln for ln in lines if "torch" in ln]  # no torch (comments aside)
    for ln in lines:
        if ln.startswith("COPY"):
            for src in ln.split()[1:-1]:
                assert list(REPO.glob(src.rstrip("/"))), f"Dockerfile copies missing {src}"
    assert lines[-1] == 'ENTRYPOINT ["python", "-m", "devices.agent"]'
