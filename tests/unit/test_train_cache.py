"""The training cache and the device encoder's decimation: what training reads is what the
device computes, within float16 storage."""

import json
import os

import numpy as np
import pytest
import torch

from epic.data.cache import cached_split
from epic.data.normalized import load_normalized
from epic.errors import InputError
from epic.models.encoder import Decimator, lowpass_fir
from epic.models.registry import build_model
from epic.train import TrainConfig, predict, train


def test_cache_holds_the_normalised_decimated_gathers_in_float16(tiny_dataset, tmp_path):
    full = load_normalized(tiny_dataset)
    cache = cached_split(tiny_dataset, decimate=4, root=tmp_path)
    assert cache.x.dtype == np.float16 and cache.x.shape == (len(full.x), 5, 250, 70)
    with torch.no_grad():
        expected = Decimator(4)(torch.from_numpy(full.x)).numpy()
    assert np.abs(cache.x.astype(np.float32) - expected).max() < 1e-3
    assert np.abs(cache.y.astype(np.float32) - full.y).max() < 1e-3
    undecimated = cached_split(tiny_dataset, decimate=1, root=tmp_path)
    assert undecimated.x.shape == full.x.shape and undecimated.path != cache.path


def test_cache_is_reused_and_rebuilt_when_the_source_changes(tiny_dataset, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_dataset, src)
    first = cached_split(src, decimate=4, root=tmp_path / "c")
    stamp = (first.path / "cache.json").stat().st_mtime_ns
    again = cached_split(src, decimate=4, root=tmp_path / "c")
    assert again.path == first.path and (again.path / "cache.json").stat().st_mtime_ns == stamp
    shard = next(src.glob("data*.npy"))
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    changed = cached_split(src, decimate=4, root=tmp_path / "c")
    assert changed.path != first.path
    meta = json.loads((changed.path / "cache.json").read_text())
    assert meta["samples"] == len(changed.x) and meta["source"]["decimate"] == 4


def test_cache_refuses_a_bad_decimation(tiny_dataset, tmp_path):
    with pytest.raises(InputError, match="decimate must be 1 or 4"):
        cached_split(tiny_dataset, decimate=3, root=tmp_path)


def test_decimator_keeps_the_ricker_band_and_rejects_what_would_alias():
    h = lowpass_fir(41, 0.1)
    freqs_hz = np.fft.rfftfreq(4096, d=1e-3)
    gain = np.abs(np.fft.rfft(h, 4096))
    assert np.all(np.abs(gain[freqs_hz <= 60] - 1) < 0.01)  # the 15 Hz Ricker's band
    assert np.all(gain[freqs_hz >= 150] < 0.01)  # folds below the new 125 Hz Nyquist
    # a 15 Hz Ricker trace, decimated and interpolated back, keeps its shape
    t = np.arange(1000) * 1e-3
    arg = (np.pi * 15 * (t - 0.1)) ** 2
    ricker = ((1 - 2 * arg) * np.exp(-arg)).astype(np.float32)
    x = torch.from_numpy(np.tile(ricker[None, None, :, None], (1, 5, 1, 2)))
    with torch.no_grad():
        y = Decimator(4)(x)[0, 0, :, 0].numpy()
    assert y.shape == (250,)
    assert np.abs(y - ricker[::4]).max() < 0.01 * np.abs(ricker).max()


def test_encoding_cached_traces_equals_encoding_raw_traces():
    torch.manual_seed(0)
    model = build_model("epic", token_dim=8, encoder_width=16, dim=32, depth=1, heads=2).eval()
    x = torch.randn(2, 5, 1000, 70)
    dec = model.encoder.predecimated(x.reshape(2, 5, 1000, 5, 14).permute(0, 3, 1, 2, 4)
                                     .reshape(10, 5, 1000, 14))
    cached = dec.reshape(2, 5, 5, 250, 14).permute(0, 2, 3, 1, 4).reshape(2, 5, 250, 70)
    with torch.no_grad():
        assert torch.allclose(model(x), model(cached, decimated=True), atol=1e-5)


def test_training_from_the_cache_lowers_the_loss_and_predicts_like_evaluate(tiny_dataset,
                                                                             tmp_path):
    cfg = TrainConfig(model="epic", data_dir=str(tiny_dataset), out_dir=str(tmp_path / "run"),
                      epochs=4, batch=4, lr=2e-3, seed=0, device_dropout=0.0,
                      precision="bf16", cache_dir=str(tmp_path / "cache"),
                      model_config={"token_dim": 8, "encoder_width": 16, "dim": 32,
                                    "depth": 1, "heads": 2})
    train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    from epic.models.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt["config"]["token_dim"] == 8 and model.encoder.decimate == 4
    cache = cached_split(tiny_dataset, decimate=4, root=tmp_path / "cache")
    full = load_normalized(tiny_dataset)
    np.testing.assert_allclose(predict(model, cache.x, decimated=True), predict(model, full.x),
                               atol=2e-2)


def test_cuda_is_refused_with_one_line_where_there_is_none(tiny_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = TrainConfig(model="epic", data_dir=str(tiny_dataset), out_dir=str(tmp_path / "r"),
                      device="cuda")
    with pytest.raises(InputError, match="--device cuda: this machine has no CUDA device"):
        train(cfg, progress=False)
    assert not (tmp_path / "r").exists()
