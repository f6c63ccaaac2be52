"""Offline sample quality: FID/KID in a classifier's feature space, and the exact Gaussian check.

No Inception network can be downloaded here, and it would not suit 16×16 images anyway:
FID and KID are computed on the hidden features of an MLP classifier trained on the real
training split of the model's own labelled data set (`digits` or `shapes`; its test accuracy
is reported), with the real-versus-real floor.

The Gaussian check needs no learned model at all: `GaussianEpsModule` is the closed-form
optimal ε-predictor (engine/gaussian.py) as a torch module, so it exports to ONNX and runs
through the same backends as a U-Net.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddpmrt.engine.gaussian import GaussianData, empirical_moments, w2_gaussian
from ddpmrt.export.evaluation.judged import JUDGED_DATASETS


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits: the squared 2-Wasserstein distance."""
    return w2_gaussian(*empirical_moments(features_a), *empirical_moments(features_b)) ** 2


def kid(features_a: np.ndarray, features_b: np.ndarray, subsets: int = 20, subset_size: int = 100, seed: int = 0) -> float:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, averaged over subsets."""
    rng = np.random.default_rng(seed)
    d = features_a.shape[1]
    m = min(subset_size, len(features_a), len(features_b))
    values = []
    for _ in range(subsets):
        a = features_a[rng.choice(len(features_a), m, replace=False)]
        b = features_b[rng.choice(len(features_b), m, replace=False)]
        kaa, kbb, kab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
        values.append((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                      - 2 * kab.mean())
    return float(np.mean(values))




@dataclass
class ClassifierJudge:
    """A classifier trained on the real training split; its hidden layer is the feature space."""

    classifier: object
    test_accuracy: float
    real_train: np.ndarray    # (N, D) flattened real images, training split
    real_test: np.ndarray     # held out
    dataset: str = "digits"

    @classmethod
    def train(cls, dataset: str = "digits", image_size: int = 16, seed: int = 0) -> "ClassifierJudge":
        from sklearn.neural_network import MLPClassifier

        from ddpmrt.export.training.data import load_dataset

        if dataset not in JUDGED_DATASETS:
            raise ValueError(f"no judge for data set {dataset!r}; judged: {', '.join(JUDGED_DATASETS)}")
        real = load_dataset(dataset, image_size=image_size)
        x = real.images.reshape(len(real.images), -1)
        order = np.random.default_rng(seed).permutation(len(x))
        train, test = order[:JUDGED_DATASETS[dataset]], order[JUDGED_DATASETS[dataset]:]
        clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, random_state=seed).fit(x[train], real.labels[train])
        accuracy = float((clf.predict(x[test]) == real.labels[test]).mean())
        return cls(clf, accuracy, x[train], x[test], dataset)

    @property
    def description(self) -> str:
        return f"MLP {self.dataset} classifier (sklearn), hidden-layer features"

    def _hidden(self, images: np.ndarray) -> np.ndarray:
        # Judge what a user sees: pixels clipped to [-1, 1], as to_uint8 does.
        flat = np.clip(images.reshape(len(images), -1), -1.0, 1.0)
        return np.maximum(flat @ self.classifier.coefs_[0] + self.classifier.intercepts_[0], 0.0)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Hidden-layer activations, standardised with the real training split's statistics so that
        KID's polynomial kernel sees features of unit scale (as Inception pool features roughly are)."""
        if not hasattr(self, "_scale"):
            real = self._hidden(self.real_train)
            std = real.std(0)
            self._shift, self._scale = real.mean(0), std + 0.1 * std.mean()  # floor: no near-dead unit dominates
        return (self._hidden(images) - self._shift) / self._scale

    def scores(self, images: np.ndarray) -> dict:
        feats, real = self.features(images), self.features(self.real_train)
        proba = self.classifier.predict_proba(np.clip(images.reshape(len(images), -1), -1.0, 1.0))
        classes = proba.shape[1]
        return {"fid": fid(feats, real), "kid": kid(feats, real),
                "recognised": float((proba.max(1) > 0.5).mean()),
                "min_class_share": float(np.bincount(proba.argmax(1), minlength=classes).min() / len(images))}

    def floor(self) -> dict:
        """Real test images against the real training split: the best a sampler can score."""
        feats, real = self.features(self.real_test), self.features(self.real_train)
        return {"fid": fid(feats, real), "kid": kid(feats, real)}


class GaussianEpsModule(torch.nn.Module):
    """ε*(x, t) = M_t x + m_t for Gaussian data, tabulated for every t: an exportable 'network'."""

    def __init__(self, data: GaussianData):
        super().__init__()
        ops = [data._eps_operator(t) for t in range(data.schedule.num_train_timesteps)]
        self.register_buffer("m_ops", torch.tensor(np.stack([o[0] for o in ops]), dtype=torch.float32))
        self.register_buffer("m_vecs", torch.tensor(np.stack([o[1] for o in ops]), dtype=torch.float32))
        self.dim = data.dim

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], self.dim, 1).to(self.m_ops.dtype)
        eps = torch.bmm(self.m_ops[t], flat)[..., 0] + self.m_vecs[t]
        return eps.reshape(x.shape).to(x.dtype)
