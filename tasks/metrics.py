"""Binary classification metrics shared by training, evaluation and the gate."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """ROC AUC, log loss, Brier score and accuracy; AUC is NaN when only one class is present."""
    labels = labels.astype(np.float64)
    probs = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(labels)) == 2
    return {
        "roc_auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "log_loss": float(log_loss(labels, probs, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, probs)),
        "accuracy": float(np.mean((probs >= threshold) == (labels == 1))),
        "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
    }
