"""epic.finetune: the decoder adapted to the real int8 LiteRT encoders of a small seeded EPIC
model (five encoders exported once per module, a few seconds each)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="litert-torch (the 'export' extra) is not installed")

import epic.finetune as finetune_mod
from epic.data.openfwi import OpenFWIDataset, get_dataset
from epic.errors import InputError
from epic.export import export_encoders
from epic.export_parity import decode_latents, paired_latents
from epic.finetune import FinetuneConfig, finetune_decoder
from epic.inference.encoder import EncoderRuntime
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.models.registry import build_model

CONFIG = {"token_dim": 8, "encoder_width": 16, "dim": 32, "depth": 1, "heads": 2}
QUICK = FinetuneConfig(epochs=2, batch=4, lr=3e-3, device_dropout=0.0)


@pytest.fixture(scope="module")
def source(tmp_path_factory, tiny_dataset):
    """``(checkpoint, encoders_dir)``: a seeded untrained EPIC and its five int8 encoders."""
    torch.manual_seed(0)
    model = build_model("epic", **CONFIG).eval()
    root = tmp_path_factory.mktemp("finetune")
    ckpt = save_checkpoint(root / "model.pt", model, "epic", CONFIG, "flatvel-a",
                           {"epoch": 0})
    export_encoders(ckpt, tiny_dataset, root / "encoders", n_calibration=4, threads=1)
    return ckpt, root / "encoders"


def _int8_mae(checkpoint, encoders_dir, data_dir) -> float:
    """MAE of ``checkpoint``'s decoder on the int8 encoders' latents of ``data_dir``."""
    model, _ = load_checkpoint(checkpoint)
    encoders = {d: EncoderRuntime.from_manifest(encoders_dir / "manifest.json", d)
                for d in range(1, 6)}
    ds = OpenFWIDataset(data_dir)
    _, tokens_q, y = paired_latents(model, encoders, ds, np.arange(len(ds)),
                                    get_dataset("flatvel-a"))
    return float(np.abs(decode_latents(model, tokens_q) - y).mean())


def test_finetune_learns_the_int8_latents_and_keeps_the_encoder(source, tiny_dataset, tmp_path):
    checkpoint, encoders = source
    record = finetune_decoder(checkpoint, encoders, tiny_dataset, tmp_path / "ft", QUICK)
    assert record["epoch"] == 2 and 0 < record["int8_share"] < 1
    tuned, ckpt = load_checkpoint(tmp_path / "ft" / "model.pt")
    before, _ = load_checkpoint(checkpoint)
    enc_a, enc_b = before.encoder.state_dict(), tuned.encoder.state_dict()
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_a)  # the exports stay exact
    pairs = zip(before.decoder.state_dict().values(), tuned.decoder.state_dict().values(),
                strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    meta = ckpt["meta"]["finetune"]
    assert meta["encoders"]["dir"] == str(encoders) and meta["gathers"] == 8
    assert meta["config"]["p_int8"] == 0.5
    assert ckpt["meta"]["epoch"] == 0  # the source's own meta is kept
    lines = (tmp_path / "ft" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (_int8_mae(tmp_path / "ft" / "model.pt", encoders, tiny_dataset)
            < _int8_mae(checkpoint, encoders, tiny_dataset))


def test_a_killed_job_resumes_to_the_same_model(source, tiny_dataset, tmp_path, monkeypatch,
                                                caplog):
    checkpoint, encoders = source
    whole = finetune_decoder(checkpoint, encoders, tiny_dataset, tmp_path / "whole", QUICK)
    calls = {"n": 0}
    real = finetune_mod.random_presence

    def dies_in_epoch_two(*args):
        calls["n"] += 1
        if calls["n"] > 2:  # 8 gathers / batch 4: two steps per epoch
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(finetune_mod, "random_presence", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        finetune_decoder(checkpoint, encoders, tiny_dataset, tmp_path / "cut", QUICK)
    assert not (tmp_path / "cut" / "model.pt").exists()
    monkeypatch.setattr(finetune_mod, "random_presence", real)
    with caplog.at_level(logging.INFO, logger="epic.finetune"):
        resumed = finetune_decoder(checkpoint, encoders, tiny_dataset, tmp_path / "cut", QUICK)
    assert "reusing the latents" in caplog.text and "at epoch 1" in caplog.text
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    a, _ = load_checkpoint(tmp_path / "whole" / "model.pt")
    b, _ = load_checkpoint(tmp_path / "cut" / "model.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_encoders_of_another_checkpoint_are_refused(source, tiny_dataset, tmp_path):
    _, encoders = source
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / "other.pt", build_model("epic", **CONFIG), "epic",
                            CONFIG, "flatvel-a")
    with pytest.raises(InputError, match=r"exported from a checkpoint with sha256 .* not "
                                         r".*other\.pt.*export the encoders"):
        finetune_decoder(other, encoders, tiny_dataset, tmp_path / "ft", QUICK)
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("bad, message", [
    ({"p_int8": 1.5}, "p_int8 must be within"), ({"epochs": 0}, "epochs must be >= 1"),
    ({"precision": "fp16"}, "precision must be fp32 or bf16")])
def test_bad_settings_name_the_value(source, tiny_dataset, tmp_path, bad, message):
    checkpoint, encoders = source
    cfg = FinetuneConfig(**{**QUICK.__dict__, **bad})
    with pytest.raises(InputError, match=message):
        finetune_decoder(checkpoint, encoders, tiny_dataset, tmp_path / "ft", cfg)
