"""Binary classification metrics shared by training, evaluation and the gate."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Ranking (ROC AUC, PR AUC), probability (log loss, Brier) and decision metrics at `threshold`.

    AUCs are NaN when only one class is present (a small slice, say).
    """
    labels = labels.astype(np.float64)
    probs = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    both = len(np.unique(labels)) == 2
    decided = probs >= threshold
    return {
        "roc_auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "pr_auc": float(average_precision_score(labels, probs)) if both else float("nan"),
        "log_loss": float(log_loss(labels, probs, labels=[0, 1])) if len(labels) else float("nan"),
        "brier": float(brier_score_loss(labels, probs)) if len(labels) else float("nan"),
        "accuracy": float(np.mean(decided == (labels == 1))) if len(labels) else float("nan"),
        "precision": float(precision_score(labels, decided, zero_division=0)),
        "recall": float(recall_score(labels, decided, zero_division=0)),
        "f1": float(f1_score(labels, decided, zero_division=0)),
        "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
    }


def best_f1_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The probability cut that maximises F1 on these rows (chosen on validation, applied to the holdout)."""
    if len(np.unique(labels)) < 2:
        return 0.5
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])
