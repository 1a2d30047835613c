#!/usr/bin/env python3
"""Reference values for loupe's probes (train/src/probes.rs), from scikit-learn.

    pip install numpy scikit-learn
    python3 reference/probe_reference.py

Writes train/tests/fixtures/probe_reference.json: a small seeded data set (300 x 12, two
overlapping Gaussian classes with unequal feature scales and one constant column),
scikit-learn's L2 logistic regression on it for several C (lbfgs, tol 1e-12), and
roc_auc_score / average_precision_score of seeded scores with ties.
"""
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

OUT = Path(__file__).resolve().parent.parent / "train" / "tests" / "fixtures" / "probe_reference.json"


def main():
    rng = np.random.default_rng(11)
    n, d = 300, 12
    y = rng.random(n) < 0.4
    x = rng.standard_normal((n, d)) * np.linspace(0.1, 5.0, d)
    x[y, :4] += np.array([0.8, -0.5, 0.3, 0.0])
    x[:, 7] = 2.5  # constant
    x = x.astype(np.float32)
    fits = []
    for c in [0.01, 0.1, 1.0, 10.0]:
        model = LogisticRegression(C=c, tol=1e-12, max_iter=100000).fit(x.astype(np.float64), y)
        fits.append({"C": c, "coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])})
    scores = np.round(rng.standard_normal(200) + 0.7 * (labels := rng.random(200) < 0.3), 1).astype(np.float32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "x": x.tolist(), "y": y.tolist(), "fits": fits,
        "scores": scores.tolist(), "labels": labels.tolist(),
        "auroc": roc_auc_score(labels, scores), "average_precision": average_precision_score(labels, scores),
    }) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
