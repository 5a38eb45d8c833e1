"""Seven-class diagnosis metrics (ISIC 2018 Task 3), from probabilities and integer labels.

Probabilities are (N, 7) in the column order of ``derm.labels.CLASSES``; labels are
class indices into it.

Ties: as the ISIC scorer does (``isic_challenge_scoring.metrics._to_labels``), a row
whose top probability is shared by two or more classes has no predicted class
(``UNDECIDED``) and counts as wrong for every hard-label metric here: it is a miss
for its true class and a false positive for none.

Absent classes: balanced accuracy averages recall over the classes present in the
truth, as the ISIC scorer does (its per-class recall of an absent class is 0/0 = NaN,
which pandas' mean skips) and as scikit-learn's ``balanced_accuracy_score`` does.
Macro precision/recall/F1 average over the classes present in the truth or the
prediction (scikit-learn's default label set, zero_division=0), so ``recall_macro``
is lower than ``balanced_accuracy`` when a class absent from the truth is predicted.
AUROC is one-vs-rest per class; a class absent from the truth (or the only class
present) has no ROC curve and is left out of the macro mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from derm.errors import DataError
from derm.labels import CLASSES
from derm.metrics.confusion import to_numpy

UNDECIDED = -1
ECE_BINS = 15


def predicted_labels(probabilities: Any) -> np.ndarray:
    """Argmax class per row, or ``UNDECIDED`` (-1) where the top probability is tied.

    >>> predicted_labels([[0.1, 0.6, 0.3], [0.4, 0.4, 0.2]]).tolist()
    [1, -1]
    """
    probabilities = to_numpy(probabilities)
    top = probabilities.max(axis=1, keepdims=True)
    tied = (probabilities == top).sum(axis=1) > 1
    return np.where(tied, UNDECIDED, probabilities.argmax(axis=1))


def confusion_matrix(pred_labels: Any, true_labels: Any, n_classes: int = len(CLASSES)) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = truth, columns = prediction.

    Undecided predictions (-1) are in no column, so a row can sum to less than the
    class's support.
    """
    pred, true = np.asarray(pred_labels), np.asarray(true_labels)
    decided = pred != UNDECIDED
    flat = true[decided] * n_classes + pred[decided]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_counts(pred_labels: Any, true_labels: Any, n_classes: int = len(CLASSES)):
    """(tp, predicted, support) per class: correct, predicted as the class, truly the class."""
    pred, true = np.asarray(pred_labels), np.asarray(true_labels)
    tp = np.bincount(true[pred == true], minlength=n_classes)
    predicted = np.bincount(pred[pred != UNDECIDED], minlength=n_classes)
    support = np.bincount(true, minlength=n_classes)
    return tp, predicted, support


def _divide_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def balanced_accuracy(pred_labels: Any, true_labels: Any, n_classes: int = len(CLASSES)) -> float:
    """Mean recall over the classes present in the truth (the ISIC 2018 Task 3 score).

    >>> balanced_accuracy([0, 0, 1, -1], [0, 1, 1, 1], n_classes=3)  # (1/1 + 1/3) / 2
    0.6666666666666666
    """
    tp, _, support = per_class_counts(pred_labels, true_labels, n_classes)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(tp[present] / support[present]))


def precision_recall_f1(pred_labels: Any, true_labels: Any, n_classes: int = len(CLASSES)) -> dict[str, float]:
    """Macro and support-weighted precision, recall and F1 (zero where undefined).

    Macro averages over the classes present in the truth or the prediction.
    """
    tp, predicted, support = per_class_counts(pred_labels, true_labels, n_classes)
    precision = _divide_or_zero(tp, predicted)
    recall = _divide_or_zero(tp, support)
    f1 = _divide_or_zero(2 * tp, predicted + support)
    used = (support > 0) | (predicted > 0)
    weights = support / support.sum() if support.sum() else np.zeros(n_classes)
    scores = {}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        scores[f"{name}_macro"] = float(values[used].mean()) if used.any() else float("nan")
        scores[f"{name}_weighted"] = float((values * weights).sum())
    return scores


def auroc_per_class(probabilities: Any, true_labels: Any) -> np.ndarray:
    """One-vs-rest ROC AUC per class; NaN for a class absent from (or alone in) the truth."""
    probabilities, true = to_numpy(probabilities), np.asarray(true_labels)
    aurocs = np.full(probabilities.shape[1], np.nan)
    for k in range(probabilities.shape[1]):
        is_class = true == k
        if is_class.any() and not is_class.all():
            aurocs[k] = roc_auc_score(is_class, probabilities[:, k])
    return aurocs


def macro_auroc(probabilities: Any, true_labels: Any) -> float:
    """Mean one-vs-rest AUROC over the classes that have a ROC curve (NaN if none)."""
    aurocs = auroc_per_class(probabilities, true_labels)
    defined = ~np.isnan(aurocs)
    return float(aurocs[defined].mean()) if defined.any() else float("nan")


def expected_calibration_error(probabilities: Any, true_labels: Any, n_bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence (Guo et al. 2017): sum over bins |B|/N |acc(B) - conf(B)|.

    Bins are equal-width on (0, 1], each (lo, hi]; a tied row's prediction is wrong.

    >>> probs = [[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]
    >>> round(expected_calibration_error(probs, [0, 1, 0, 1]), 10)  # (2*0.4 + 0.4 + 0.3) / 4
    0.375
    """
    probabilities, true = to_numpy(probabilities), np.asarray(true_labels)
    confidence = probabilities.max(axis=1)
    correct = (predicted_labels(probabilities) == true).astype(float)
    interior_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    bins = np.digitize(confidence, interior_edges, right=True)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))
    # sum_b |B|/N * |acc_b - conf_b| = sum_b |sum_correct_b - sum_conf_b| / N
    return float(gap.sum() / count.sum()) if count.sum() else float("nan")


class ClassificationAccumulator:
    """Collects (N, 7) probabilities and labels batch by batch; ``compute`` scores them all.

    Keeps every probability row (7 floats an image), which AUROC needs.

    >>> acc = ClassificationAccumulator()
    >>> acc.update([[0.7, 0.1, 0.1, 0.05, 0.05, 0, 0]], [0])
    >>> acc.compute()["balanced_accuracy"]
    1.0
    """

    def __init__(self, n_classes: int = len(CLASSES)):
        self.n_classes = n_classes
        self._probabilities: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def update(self, probabilities: Any, labels: Any) -> None:
        """Add a batch: probabilities (B, n_classes), integer labels (B,) in [0, n_classes)."""
        probabilities = to_numpy(probabilities).astype(np.float64, copy=False)
        labels = to_numpy(labels).astype(np.int64, copy=False).reshape(-1)
        if probabilities.ndim != 2 or probabilities.shape != (len(labels), self.n_classes):
            raise ValueError(f"probabilities of shape {probabilities.shape} for {len(labels)} labels "
                             f"and {self.n_classes} classes")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes}), got {sorted(set(labels.tolist()))}")
        self._probabilities.append(probabilities)
        self._labels.append(labels)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All probabilities (N, n_classes) and labels (N,) seen so far."""
        if not self._labels:
            return np.zeros((0, self.n_classes)), np.zeros(0, np.int64)
        return np.concatenate(self._probabilities), np.concatenate(self._labels)

    def confusion_matrix(self) -> np.ndarray:
        """Rows = truth, columns = prediction, in CLASSES order (tied rows in no column)."""
        probabilities, labels = self.arrays()
        return confusion_matrix(predicted_labels(probabilities), labels, self.n_classes)

    def report(self, class_names=CLASSES) -> pd.DataFrame:
        """Per-class precision, recall, F1, AUROC and support, one row per class."""
        probabilities, labels = self.arrays()
        pred = predicted_labels(probabilities)
        tp, predicted, support = per_class_counts(pred, labels, self.n_classes)
        return pd.DataFrame({
            "precision": _divide_or_zero(tp, predicted),
            "recall": _divide_or_zero(tp, support),
            "f1": _divide_or_zero(2 * tp, predicted + support),
            "auroc": auroc_per_class(probabilities, labels),
            "support": support,
        }, index=pd.Index(list(class_names[: self.n_classes]), name="class"))

    def compute(self) -> dict[str, float]:
        """accuracy, balanced_accuracy, precision/recall/f1 _macro and _weighted, auroc, ece,
        and recall_<CLASS> / auroc_<CLASS> for each class present in the truth."""
        probabilities, labels = self.arrays()
        if not len(labels):
            raise DataError("classification metrics need at least one labelled image; "
                            "the evaluation set has none")
        pred = predicted_labels(probabilities)
        metrics = {
            "accuracy": float(np.mean(pred == labels)),
            "balanced_accuracy": balanced_accuracy(pred, labels, self.n_classes),
            **precision_recall_f1(pred, labels, self.n_classes),
            "auroc": macro_auroc(probabilities, labels),
            "ece": expected_calibration_error(probabilities, labels),
        }
        report = self.report()
        for name, row in report[report["support"] > 0].iterrows():
            metrics[f"recall_{name}"] = float(row["recall"])
            if not np.isnan(row["auroc"]):
                metrics[f"auroc_{name}"] = float(row["auroc"])
        return metrics
