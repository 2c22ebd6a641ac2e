"""The encoder as a feature extractor: a linear probe trained on a model's posterior features.

    vaelab encode --pretrained burda-iwae --split train --out train.npz
    vaelab encode --pretrained burda-iwae --split test --out test.npz
    python examples/features_probe.py train.npz test.npz

Each .npz holds ``mean`` and ``scale`` (N x d, the posterior q(z|x) of every image) and ``label``.
The probe is scikit-learn's logistic regression on the standardised means (the scales, appended,
with ``--with-scales``); it prints the test accuracy. In Python, ``model.features(x)`` gives the
same (mean, scale) for a batch of images.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def features(path: str, with_scales: bool) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as archive:
        x = archive["mean"]
        if with_scales:
            x = np.concatenate([x, np.log(archive["scale"])], axis=1)
        return x, archive["label"]


def probe_accuracy(train: str, test: str, with_scales: bool = False, limit: int = 0) -> float:
    x_train, y_train = features(train, with_scales)
    x_test, y_test = features(test, with_scales)
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("train", help=".npz from `vaelab encode --split train --out FILE.npz`")
    parser.add_argument("test", help=".npz from `vaelab encode --split test --out FILE.npz`")
    parser.add_argument("--with-scales", action="store_true", help="append log posterior scales to the means")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N training images (0: all)")
    args = parser.parse_args()
    accuracy = probe_accuracy(args.train, args.test, args.with_scales, args.limit)
    print(f"linear probe on the posterior features: test accuracy {accuracy:.2%}")


if __name__ == "__main__":
    main()
