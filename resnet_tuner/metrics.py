"""Held-out figures of a classifier: accuracy, top-5, per-class report, confusion matrix.

scikit-learn computes them; the export writes them to metrics.json and
`predict` turns a sigmoid output into two-class probabilities with
`class_probabilities`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def class_probabilities(probs: np.ndarray) -> np.ndarray:
    """(N, classes) probabilities from a softmax or a single sigmoid unit."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[-1] == 1:
        return np.concatenate([1 - probs, probs], axis=-1)
    return probs


def held_out_metrics(probs: np.ndarray, labels: np.ndarray, class_names) -> dict[str, Any]:
    """Accuracy, top-5 (over 5 classes), per-class report and confusion matrix."""
    from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

    probs = class_probabilities(probs)
    predicted = probs.argmax(axis=1)
    classes = list(range(len(class_names)))
    out: dict[str, Any] = {
        "split": "test",
        "images": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
    }
    if len(class_names) > 5:
        out["top5_accuracy"] = float(
            top_k_accuracy_score(labels, probs, k=5, labels=classes)
        )
    out["per_class"] = classification_report(
        labels, predicted, labels=classes, target_names=list(class_names), output_dict=True,
        zero_division=0,
    )
    out["confusion_matrix"] = confusion_matrix(labels, predicted, labels=classes).tolist()
    return out
