"""scikit-learn: SETMLPClassifier in a Pipeline with StandardScaler, cross-validated on
Madelon, then partial_fit (one epoch per call) on streamed mini-batches.

    SPARSETRAIN_DATA=../shared/datasets python examples/sklearn_pipeline.py
"""

import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sparsetrain.data import load_dataset
from sparsetrain.estimators import SETMLPClassifier

DATA = os.environ.get("SPARSETRAIN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets"
ds = load_dataset("madelon", DATA, standardize=False)

# Madelon's paper architecture 500-400-100-400-2 (epsilon 10, N(0,1)/10 init, All-ReLU 0.5).
# 5 epochs keep this example to seconds; Madelon needs hundreds (paper: 500 epochs, about
# 71% with SET All-ReLU), so expect accuracy near chance here.
clf = SETMLPClassifier((400, 100, 400), epsilon=10.0, init="normal", alpha=0.5, max_iter=5,
                       batch_size=32, random_state=0)
pipe = make_pipeline(StandardScaler(), clf)
scores = cross_val_score(pipe, ds.X_train, ds.y_train, cv=3)
print(f"3-fold accuracy: {np.round(scores, 3)} (mean {scores.mean():.3f})")

pipe.fit(ds.X_train, ds.y_train)
print(f"validation accuracy: {pipe.score(ds.X_test, ds.y_test):.3f}; "
      f"{pipe[-1].n_iter_} epochs, loss curve {np.round(pipe[-1].loss_curve_, 3)}")

# partial_fit: each call trains one more epoch on the same network (SET rewiring between calls).
online = SETMLPClassifier((400, 100, 400), epsilon=10.0, init="normal", alpha=0.5, random_state=0)
scaler = StandardScaler().fit(ds.X_train)
for _ in range(2):
    online.partial_fit(scaler.transform(ds.X_train), ds.y_train, classes=[0, 1])
print(f"partial_fit x2: {online.n_iter_} epochs, "
      f"validation accuracy {online.score(scaler.transform(ds.X_test), ds.y_test):.3f}")
