"""The shipped `digits` model draws recognisable digits (judged by a classifier of real digits)."""

import numpy as np
import pytest

pytest.importorskip("torch")
sklearn = pytest.importorskip("sklearn")

from ddpmrt.engine import DDIMSampler, load_model  # noqa: E402
from ddpmrt.export.data import load_digits  # noqa: E402


@pytest.fixture(scope="module")
def classifier():
    from sklearn.linear_model import LogisticRegression

    real = load_digits(16)
    x = real.images.reshape(len(real.images), -1)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x[:1500], real.labels[:1500])
    held_out = clf.predict_proba(x[1500:])
    # The judge itself must be sure of real digits, or it would pass anything.
    assert (held_out.argmax(1) == real.labels[1500:]).mean() > 0.9
    return clf


@pytest.mark.slow
def test_ddim50_samples_are_recognisable_digits(classifier):
    model = load_model("digits")
    assert model.image_shape == (1, 16, 16)
    images = DDIMSampler(model.schedule, num_steps=50).sample(model, (500, 1, 16, 16), seed=0, progress=False)
    proba = classifier.predict_proba(images.reshape(500, -1))
    confident = proba.max(1) > 0.5
    shares = np.bincount(proba.argmax(1), minlength=10) / 500
    print(f"confident {confident.mean():.3f}, class shares {np.round(shares, 3).tolist()}")
    assert confident.mean() >= 0.9
    assert shares.min() >= 0.03


def test_pure_noise_is_not_recognised(classifier):
    # Counter-check: the criterion rejects noise images.
    noise = np.random.default_rng(0).uniform(-1, 1, (500, 256))
    assert (classifier.predict_proba(noise).max(1) > 0.5).mean() < 0.9 or \
        (np.bincount(classifier.predict(noise), minlength=10) / 500).min() < 0.03
