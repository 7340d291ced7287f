"""Held-out figures of a classifier: accuracy, top-5, per-class report, confusion matrix.

scikit-learn computes them; the export writes them to metrics.json and
`predict` turns a sigmoid output into two-class probabilities with
`class_probabilities`. A search without a test split (test fraction 0) has
its validation split's figures instead, marked `"split": "val"` with a
`"note"` that the card, the report and the command line repeat
(`accuracy_text`).
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


#: What the figures of the validation split are, when there is no test split.
NO_TEST_SPLIT = ("no test split: the accuracy shown is validation accuracy of the search, an "
                 "optimistic estimate, since the validation split chose this model")
#: The same after a refit, which trained on the validation images too.
NO_TEST_SPLIT_REFIT = ("no test split, and the model was refit on train + val: the accuracy "
                       "shown is on images it trained on, not an estimate for new images")


def held_out_metrics(probs: np.ndarray, labels: np.ndarray, class_names, split: str = "test",
                     refit: bool = False) -> dict[str, Any]:
    """Accuracy, top-5 (over 5 classes), per-class report and confusion matrix.

    Args:
        probs: the model's outputs for the images.
        labels: their int labels.
        class_names: index = label.
        split: which split the images are; `"val"` (no test split) adds a
            `"note"` saying what the figures are worth.
        refit: the model was refit on train + val (the note says so).
    """
    from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

    probs = class_probabilities(probs)
    predicted = probs.argmax(axis=1)
    classes = list(range(len(class_names)))
    out: dict[str, Any] = {
        "split": split,
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
    if split != "test":
        out["note"] = NO_TEST_SPLIT_REFIT if refit else NO_TEST_SPLIT
    return out


def accuracy_text(metrics: dict[str, Any]) -> str:
    """`test accuracy 93.33 %`, or with no test split the validation accuracy and its note."""
    figure = f"{100 * metrics['accuracy']:.2f} %"
    if metrics.get("split", "test") == "test":
        return f"test accuracy {figure}"
    return f"validation accuracy {figure}; {metrics.get('note', NO_TEST_SPLIT)}"
