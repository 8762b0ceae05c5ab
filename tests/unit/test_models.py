"""Model shapes, sizes, masking, training, checkpoints and evaluation (real torch)."""

import json

import numpy as np
import pytest
import torch

from epic.errors import DataError, InputError
from epic.evaluate import drop_presence, evaluate
from epic.metrics import fidelity
from epic.models import DISTRIBUTED, MODELS, InversionNet, build_model
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.train import TrainConfig, random_presence, train

torch.set_num_threads(2)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_range(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 5, 1000, 70))
    assert out.shape == (2, 1, 70, 70)
    assert out.abs().max() <= 1.0


def test_inversionnet_has_openfwi_parameter_count():
    # OpenFWI's InversionNet (dims 32..512): 24,409,123 parameters ("24.4 M" in the paper)
    assert sum(p.numel() for p in InversionNet().parameters()) == 24_409_123


def test_device_encoder_is_small_and_latent_fits_1024_values():
    model = build_model("epic")
    assert sum(p.numel() for p in model.encoder.parameters()) <= 200_000
    assert model.latent_values_per_device() <= 1024
    tokens = model.encode(torch.randn(1, 5, 1000, 70))
    assert tokens.shape == (1, 5, 14, 64)  # one token per receiver keeps receiver identity


@pytest.mark.parametrize("name", sorted(DISTRIBUTED))
def test_absent_device_has_no_influence(name):
    torch.manual_seed(1)
    model = build_model(name).eval()
    x = torch.randn(2, 5, 1000, 70)
    present = torch.tensor([[True, True, False, True, True], [True, False, True, True, False]])
    changed = x.clone()
    changed[0, :, :, 28:42] = torch.randn(5, 1000, 14) * 10  # device 3 of sample 0 is absent
    changed[1, :, :, 14:28] = 0.0  # device 2 of sample 1 is absent
    with torch.no_grad():
        a, b = model(x, present), model(changed, present)
        assert torch.equal(a, b)
        tokens = model.encode(x)
        poisoned = tokens.clone()
        poisoned[0, 2] = float("nan")
        assert torch.equal(model.decode(tokens, present), model.decode(poisoned, present))
        # ...while a present device does matter
        changed[0, :, :, 0:14] += 1.0
        assert not torch.equal(model(changed, present), a)
        # and with every device absent the output is still finite
        assert torch.isfinite(model(x, torch.zeros(2, 5, dtype=torch.bool))).all()


def test_random_presence_and_drop_presence():
    rng = np.random.default_rng(0)
    p = random_presence(rng, 1000, 5, 0.3)
    dropped = (~p).sum(axis=1)
    assert set(np.unique(dropped)) == {0, 1, 2}
    assert 0.25 < (dropped > 0).mean() < 0.35
    assert ((~drop_presence(10, 5, 2, seed=0)).sum(axis=1) == 2).all()
    with pytest.raises(InputError, match="within 0..4, got 5"):
        drop_presence(3, 5, 5, seed=0)


def test_metrics_match_definitions():
    true = np.zeros((2, 1, 70, 70), np.float32)
    pred = true + 0.1
    result = fidelity(pred, true)
    assert result["mae"] == pytest.approx(0.1) and result["rmse"] == pytest.approx(0.1)
    assert fidelity(true, true)["ssim"] == pytest.approx(1.0)


def test_tiny_training_lowers_the_loss_and_resumes(tiny_dataset, tmp_path):
    cfg = TrainConfig(model="epic", data_dir=str(tiny_dataset), out_dir=str(tmp_path / "run"),
                      epochs=6, batch=4, lr=2e-3, seed=0, device_dropout=0.0)
    train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[-1]["train_loss"] < 0.8 * log[0]["train_loss"]
    # resume continues from last.pt to a longer plan instead of starting over
    longer = TrainConfig(**{**cfg.__dict__, "epochs": 7})
    train(longer, resume=True, progress=False)
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["epoch"] == 7 and len(log) == 7


def test_bf16_training_lowers_the_loss_and_keeps_float32_weights(tiny_dataset, tmp_path):
    cfg = TrainConfig(model="equal-fusion", data_dir=str(tiny_dataset),
                      out_dir=str(tmp_path / "run"), epochs=5, batch=4, lr=2e-3, seed=0,
                      device_dropout=0.0, precision="bf16")
    train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < 0.8 * log[0]["train_loss"]
    model, _ = load_checkpoint(tmp_path / "run" / "model.pt", expected_model="equal-fusion")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_unknown_precision_is_refused(tiny_dataset, tmp_path):
    cfg = TrainConfig(model="epic", data_dir=str(tiny_dataset), out_dir=str(tmp_path),
                      precision="fp8")
    with pytest.raises(InputError, match="fp8"):
        train(cfg, progress=False)


def test_checkpoint_round_trip_and_evaluate(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model("isolated", token_dim=16).eval()
    path = save_checkpoint(tmp_path / "iso.pt", model, "isolated", {"token_dim": 16},
                           "flatvel-a", half=True)
    _, ckpt = load_checkpoint(path, expected_model="isolated")
    assert ckpt["dataset"] == "flatvel-a"
    result = evaluate("isolated", path, tiny_dataset, tmp_path / "r.json", drop_devices=1)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert {"mae", "rmse", "ssim"} <= saved.keys() and saved["mae"] == result["mae"]
    assert saved["samples"] == 8 and (tmp_path / "r.png").is_file()
    assert 0 < saved["mae"] < 2 and -1 <= saved["ssim"] <= 1


def test_checkpoint_errors_name_expected_and_found(tmp_path):
    model = build_model("isolated", token_dim=16)
    path = save_checkpoint(tmp_path / "iso.pt", model, "isolated", {"token_dim": 16}, "flatvel-a")
    with pytest.raises(InputError, match="holds a 'isolated' model, expected 'epic'"):
        load_checkpoint(path, expected_model="epic")
    wrong = save_checkpoint(tmp_path / "w.pt", model, "isolated", {"token_dim": 32}, "flatvel-a")
    with pytest.raises(DataError, match="weights do not fit 'isolated'"):
        load_checkpoint(wrong)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="unknown model 'resnet'"):
        build_model("resnet")
    with pytest.raises(InputError, match="takes no token_dim"):
        build_model("inversionnet", token_dim=8)
