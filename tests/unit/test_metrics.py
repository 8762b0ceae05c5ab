"""epic.metrics' numpy SSIM equals scikit-image's with OpenFWI's settings."""

from __future__ import annotations

import numpy as np
import pytest

from epic.metrics import per_sample_fidelity, ssim


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    for shape in [(70, 70), (23, 41)]:
        true = rng.random(shape)
        for pred in (true, np.clip(true + 0.1 * rng.standard_normal(shape), 0, 1),
                     rng.random(shape), np.zeros(shape)):
            want = metrics.structural_similarity(true, pred, data_range=1.0,
                                                 gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False)
            assert ssim(true, pred) == pytest.approx(want, abs=1e-12)


def test_per_sample_fidelity_of_a_perfect_map():
    true = np.linspace(-1, 1, 2 * 70 * 70).reshape(2, 1, 70, 70)
    per = per_sample_fidelity(true, true)
    assert per["mae"].tolist() == [0.0, 0.0] and per["ssim"] == pytest.approx([1.0, 1.0])
