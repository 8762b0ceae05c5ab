"""epic.inference: central's decoders exported to ONNX and run torch-free on ONNX Runtime.

A small seeded EPIC model and a narrow InversionNet are exported once per module (a few
seconds each); the shipped graphs (artifacts/decoders/flatvel-a) are checked against the
shipped checkpoints. Tolerances: runtime vs torch on the normalised scale, max |diff| <= 1e-4
per map value and |MAE_runtime - MAE_torch| <= 1e-3 (the project's parity target; the
measured figures are ~1e-7, docs/inference.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnxscript", reason="onnxscript (the 'export' extra) is not installed")

from central.assembler import DeviceParts, Gather
from central.raw import RawDecoder
from central.service import LatentDecoder
from epic.data.openfwi import OpenFWIDataset, get_dataset
from epic.data.transforms import denormalize_velocity, normalize_data
from epic.export_decoders import PARITY_TARGET, export_decoders
from epic.inference import LatentDecoderRuntime, ModelFileError, RawDecoderRuntime
from epic.inference.decoders import ModelShapeError
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.models.registry import build_model
from epic.wire import Kind, split_array

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "artifacts" / "decoders" / "flatvel-a" / "manifest.json"
EPIC_CONFIG = {"token_dim": 16, "encoder_width": 16, "dim": 32, "depth": 1, "heads": 2}
INV_CONFIG = {"dims": [8, 8, 16, 16, 32]}
MAX_ABS_TOL = 1e-4  # per map value, normalised scale
RECEIVERS = {d: (14 * (d - 1), 14 * d) for d in range(1, 6)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Seeded EPIC (small) and InversionNet (narrow) checkpoints, float16 as shipped."""
    out = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    epic = build_model("epic", **EPIC_CONFIG).eval()
    inv = build_model("inversionnet", **INV_CONFIG).eval()
    gen = torch.Generator().manual_seed(1)
    for m in inv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.05, 0.05, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    return (save_checkpoint(out / "epic.pt", epic, "epic", EPIC_CONFIG, "flatvel-a", half=True),
            save_checkpoint(out / "inv.pt", inv, "inversionnet", INV_CONFIG, "flatvel-a",
                            half=True))


@pytest.fixture(scope="module")
def exported(checkpoints, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("dec") / "onnx"
    return export_decoders(*checkpoints, out, test_dir=tiny_dataset, n_test=4, batch=3,
                           timing_gathers=2, command="pytest")


def _gathers(directory, n: int) -> np.ndarray:
    ds = OpenFWIDataset(directory)
    return np.stack([ds[i][0] for i in range(n)])  # raw amplitudes (n, 5, 1000, 70)


def _tokens(model, raw: np.ndarray) -> torch.Tensor:
    spec = get_dataset("flatvel-a")
    with torch.no_grad():
        return model.encode(torch.from_numpy(normalize_data(raw, spec.data_min, spec.data_max)))


def test_graphs_reference_the_checkpoint_weights(exported, checkpoints):
    manifest = json.loads(exported.manifest_path.read_text())
    assert manifest["format"] == "epic-decoders/1" and manifest["command"] == "pytest"
    for kind, ck in zip(("epic", "inversionnet"), checkpoints, strict=True):
        entry = manifest["models"][kind]
        weights = entry["weights"]
        assert weights["embedded"] == 0 and weights["external"] > 0  # no copy of a weight
        assert (exported.out_dir / weights["file"]).resolve() == Path(ck).resolve()
        graph = exported.out_dir / entry["file"]
        assert graph.stat().st_size < 200_000
    assert manifest["parity"]["meets_target"]
    parity = exported.parity
    for row in [*parity["epic"].values(), parity["inversionnet"]]:
        assert row["mae_abs_delta"] <= PARITY_TARGET
        assert row["map_max_abs_diff"] <= MAX_ABS_TOL
    assert set(parity["timing"]) >= {"epic", "inversionnet"}


def test_latent_runtime_matches_torch_with_partial_masks(exported, checkpoints, tiny_dataset):
    model, _ = load_checkpoint(checkpoints[0])
    rt = LatentDecoderRuntime(exported.manifest_path)
    assert rt.latent_shape == (14, EPIC_CONFIG["token_dim"]) and rt.n_devices == 5
    tokens = _tokens(model, _gathers(tiny_dataset, 6))
    present = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [0, 0, 1, 0, 0],
                        [1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [0, 1, 1, 1, 1]], bool)
    with torch.no_grad():
        expected = model.decode(tokens, torch.from_numpy(present)).numpy()
    got = rt.decode_normalised(tokens.numpy(), present)  # one dynamic batch of 6
    assert got.shape == (6, 1, 70, 70)
    np.testing.assert_allclose(got, expected, atol=MAX_ABS_TOL, rtol=0)
    one_by_one = np.concatenate([rt.decode_normalised(tokens.numpy()[i:i + 1], present[i:i + 1])
                                 for i in range(6)])
    np.testing.assert_allclose(one_by_one, got, atol=1e-5, rtol=0)
    # m/s, as central writes it; an absent device's tokens cannot reach the output
    np.testing.assert_allclose(rt.decode(tokens.numpy(), present),
                               denormalize_velocity(expected[:, 0]), atol=1.0)
    noisy = tokens.numpy().copy()
    noisy[~present] = 1e3
    np.testing.assert_allclose(rt.decode_normalised(noisy, present), got, atol=1e-5, rtol=0)
    with pytest.raises(ModelShapeError):
        rt.decode_normalised(tokens.numpy()[:, :4], present[:, :4])


def test_raw_runtime_matches_torch(exported, checkpoints, tiny_dataset):
    model, _ = load_checkpoint(checkpoints[1])
    rt = RawDecoderRuntime(exported.manifest_path)
    raw = _gathers(tiny_dataset, 3)
    spec = get_dataset("flatvel-a")
    with torch.no_grad():
        expected = model(torch.from_numpy(normalize_data(raw, spec.data_min, spec.data_max)))
    np.testing.assert_allclose(rt.decode(raw), denormalize_velocity(expected.numpy()[:, 0]),
                               atol=MAX_ABS_TOL * 1500, rtol=0)


def test_replaced_weights_or_graph_are_refused(exported, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(exported.out_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["models"].values():  # point at the checkpoints from the copy
        entry["weights"]["file"] = str((exported.out_dir / entry["weights"]["file"]).resolve())
    (out / "manifest.json").write_text(json.dumps(manifest))
    LatentDecoderRuntime(out / "manifest.json")  # loads from another folder
    manifest["models"]["epic"]["weights"]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="sha256"):
        LatentDecoderRuntime(out / "manifest.json")
    (out / "inversionnet.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelFileError, match="sha256"):
        RawDecoderRuntime(out / "manifest.json")
    with pytest.raises(ModelFileError, match="onnxruntime cannot load"):
        RawDecoderRuntime(out / "manifest.json", verify_sha256=False)
    with pytest.raises(ModelFileError, match="no such"):
        LatentDecoderRuntime(tmp_path / "missing.json")
    (out / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ModelFileError, match="not a decoder manifest"):
        LatentDecoderRuntime(out / "bad.json")


def _latent_gather(gather_id: int, tokens: np.ndarray, present: np.ndarray) -> Gather:
    """A closed latent gather: int8 frames of the devices in ``present``."""
    devices = {}
    for d in np.flatnonzero(present) + 1:
        t = tokens[d - 1]
        scale = float(np.abs(t).max() / 127) or 1.0
        q = np.clip(np.rint(t / scale), -127, 127).astype(np.int8)
        frames = tuple(split_array(Kind.LATENT, int(d), gather_id, q, scale=scale))
        devices[int(d)] = DeviceParts(int(d), frames, (0,) * len(frames), 0)
    return Gather("latent", gather_id, devices, (), 0.0, 0.0, False)


def _raw_gather(gather_id: int, raw: np.ndarray, present: np.ndarray) -> Gather:
    devices = {}
    for d in np.flatnonzero(present) + 1:
        lo, hi = RECEIVERS[int(d)]
        frames = tuple(split_array(Kind.RAW_CHUNK, int(d), gather_id,
                                   np.ascontiguousarray(raw[..., lo:hi])))
        devices[int(d)] = DeviceParts(int(d), frames, (0,) * len(frames), 0)
    return Gather("raw", gather_id, devices, (), 0.0, 0.0, False)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped decoder manifest")
def test_central_decoders_shipped_runtime_match_torch(tiny_dataset):
    """central's LatentDecoder and RawDecoder: the shipped ONNX graphs against the shipped
    checkpoints in torch, on the same gathers (full and partial)."""
    manifest = json.loads(SHIPPED.read_text())
    assert manifest["parity"]["meets_target"]
    ckpt = {k: SHIPPED.parent / v["weights"]["file"] for k, v in manifest["models"].items()}
    raw = _gathers(tiny_dataset, 2)
    present = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]], bool)
    torch_latent = LatentDecoder(ckpt["epic"], RECEIVERS)
    rt_latent = LatentDecoder(None, RECEIVERS, SHIPPED)
    assert rt_latent.model is None and rt_latent.latent_shape == torch_latent.latent_shape
    tokens = _tokens(torch_latent.model, raw).numpy()
    gathers = [_latent_gather(i, tokens[i], present[i]) for i in range(2)]
    np.testing.assert_allclose(rt_latent.decode(gathers), torch_latent.decode(gathers),
                               atol=MAX_ABS_TOL * 1500, rtol=0)
    torch_raw = RawDecoder(ckpt["inversionnet"], RECEIVERS)
    rt_raw = RawDecoder(None, RECEIVERS, decoder=SHIPPED)
    assert rt_raw.available and rt_raw.model is None
    gathers = [_raw_gather(i, raw[i], present[i]) for i in range(2)]
    np.testing.assert_allclose(rt_raw.decode(gathers), torch_raw.decode(gathers),
                               atol=MAX_ABS_TOL * 1500, rtol=0)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped decoder manifest")
def test_central_decodes_with_torch_unimportable(tmp_path):
    """central.service and central.raw, from the shipped manifest, in a fresh interpreter
    where ``import torch`` raises: both decode, and torch never loads."""
    code = textwrap.dedent(f"""
        import sys
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is forbidden in central's image")
                return None
        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        from pathlib import Path
        import central.service as service
        from central.assembler import DeviceParts, Gather
        from epic.wire import Kind, split_array
        manifest = Path({str(SHIPPED)!r})
        receivers = {RECEIVERS!r}
        config = service.parse_config(["--topology", "topology.yaml", "--rundir",
                                       {str(tmp_path)!r}, "--decoder", str(manifest)])
        assert config.checkpoint is None and config.decoder == manifest
        latent = service.LatentDecoder(config.checkpoint, receivers, config.decoder)
        raw = service.RawDecoder(None, receivers, decoder=config.decoder)
        rng = np.random.default_rng(0)
        def parts(d, frames):
            return DeviceParts(d, tuple(frames), (0,) * len(frames), 0)
        q = rng.integers(-60, 60, (14, 64)).astype(np.int8)
        lat = Gather("latent", 0, {{d: parts(d, split_array(Kind.LATENT, d, 0, q, scale=0.05))
                                   for d in (1, 2, 4, 5)}}, (), 0.0, 0.0, False)
        trace = rng.normal(0, 1, (5, 1000, 14)).astype(np.float32)
        rw = Gather("raw", 0, {{d: parts(d, split_array(Kind.RAW_CHUNK, d, 0, trace))
                               for d in (1, 2, 3)}}, (), 0.0, 0.0, False)
        maps = np.concatenate([latent.decode([lat]), raw.decode([rw])])
        assert maps.shape == (2, 70, 70) and np.isfinite(maps).all()
        assert ((maps >= 1500 - 1e-3) & (maps <= 4500 + 1e-3)).all()
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok", latent.runtime.kind, raw.runtime.kind)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["ok", "epic", "inversionnet"]


def test_export_decoders_cli(checkpoints, tmp_path, capsys):
    """``epic export-decoders`` with the EPIC decoder alone and no test split."""
    from click.testing import CliRunner

    from epic_cli import cli, main

    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, ["export-decoders", "--checkpoint", str(checkpoints[0]),
                                      "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "epic-decoder.onnx" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["models"]) == ["epic"] and "parity" not in manifest
    raw = RawDecoder(None, RECEIVERS, decoder=out / "manifest.json")  # no InversionNet in it
    assert not raw.available
    assert LatentDecoder(None, RECEIVERS, out / "manifest.json").runtime is not None
    assert main(["export-decoders", "--out", str(out)]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_central_config_needs_a_checkpoint_or_a_decoder(tmp_path, monkeypatch):
    from central.service import parse_config
    from epic.errors import InputError

    for var in ("EPIC_CHECKPOINT", "EPIC_DECODER"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match="--checkpoint"):
        parse_config(["--topology", "t.yaml", "--rundir", str(tmp_path)])
    monkeypatch.setenv("EPIC_DECODER", str(SHIPPED))
    config = parse_config(["--topology", "t.yaml", "--rundir", str(tmp_path)])
    assert config.decoder == SHIPPED and config.checkpoint is None
