"""Per-image predictions of a model (or ensemble) on a split, and the metrics they give.

Kept per image is what every reported number and figure needs, never the full masks:

- class probabilities and labels (Task 3 metrics, ROC, calibration, confusion matrix);
- lesion-mask confusion counts (tp, fp, fn, tn), or per-attribute counts divided by the
  pixel count (ISIC 2018 Task 2), from which every segmentation score follows;
- a few sample images with their true and predicted masks, for the overlays.

Because metrics are recomputed from these per-image records, any subset or resample of
the images can be scored again (``SplitPredictions.metrics(indices)``): what the bootstrap
intervals of retrain-best and of the leaderboard do. ``save``/``load`` keep the records
(not the samples) in one small ``.npz`` file, as a sweep trial does for its best epoch.

    >>> import numpy as np
    >>> predictions = SplitPredictions("classification", ["a", "b", "c"],
    ...                                class_probabilities=np.eye(7)[[0, 1, 1]], labels=np.array([0, 1, 0]))
    >>> predictions.metrics()["balanced_accuracy"], predictions.metrics([0, 1])["balanced_accuracy"]
    (0.75, 1.0)
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derm.metric_names import CLASSIFICATION_METRICS
from derm.metrics.classification import ClassificationAccumulator, balanced_accuracy, predicted_labels
from derm.metrics.segmentation import attribute_scores, lesion_scores

CLASS_METRICS = set(CLASSIFICATION_METRICS)
# Class metrics computed from the predicted labels alone (no AUROC, no calibration).
CHEAP_CLASS_METRICS = {"accuracy", "balanced_accuracy"}
LESION_TASKS = ("multitask", "segmentation")
CLASS_TASKS = ("multitask", "classification")
# Where a training run keeps its best epoch's validation predictions (beside its checkpoints).
VAL_PREDICTIONS = "val_predictions.npz"
# The arrays save() writes; None fields are left out.
ARRAYS = ("class_probabilities", "labels", "lesion_counts", "attribute_counts", "has_mask")


@dataclass
class Sample:
    """One image kept for the overlays: uint8 RGB at the model's resolution, masks (C, S, S)."""

    image_id: str
    image: np.ndarray
    true_mask: np.ndarray
    probability: np.ndarray


@dataclass
class SplitPredictions:
    """Per-image predictions of one model (or ensemble) on a split, in loader order.

    ``class_probabilities`` (N, 7) and ``labels`` (N,) for tasks with a diagnosis head
    (label -1: none); ``lesion_counts`` (N, 4) int tp, fp, fn, tn of the lesion mask, with
    ``has_mask`` (N,) False for images that have none (their counts are not scored);
    ``attribute_counts`` (N, 5, 4) per-attribute counts divided by the pixel count.
    Counts are taken at each image's original size when ``predict_split`` is given the
    truth masks (the ISIC 2018 scorer's way), else at the model's input size.
    """

    task: str
    image_ids: list[str] = field(default_factory=list)
    class_probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    lesion_counts: np.ndarray | None = None
    attribute_counts: np.ndarray | None = None
    samples: list[Sample] = field(default_factory=list)
    has_mask: np.ndarray | None = None
    epoch: int | None = None  # the epoch of training they are from, when known

    def __len__(self) -> int:
        return len(self.image_ids)

    def metrics(self, indices: np.ndarray | None = None, only: Collection[str] | None = None) -> dict[str, float]:
        """The task's metrics over the images at ``indices`` (default: all; repeats count twice).

        What ``derm.training.evaluate`` reports for a model is this, on all images. ``only``
        names the metrics wanted: a bootstrap that needs accuracy or balanced accuracy
        alone then skips the AUROC and calibration terms, which cost a thousand times more.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        metrics: dict[str, float] = {}
        if self.class_probabilities is not None:
            labels = self.labels[indices]
            labelled = labels >= 0
            probabilities, labels = self.class_probabilities[indices][labelled], labels[labelled]
            if only is not None and set(only) & CLASS_METRICS <= CHEAP_CLASS_METRICS:
                predicted = predicted_labels(probabilities)
                metrics.update(accuracy=float(np.mean(predicted == labels)) if len(labels) else float("nan"),
                               balanced_accuracy=balanced_accuracy(predicted, labels))
            else:
                accumulator = ClassificationAccumulator()
                accumulator.update(probabilities, labels)
                metrics.update(accumulator.compute())
        if self.lesion_counts is not None:
            with_mask = indices[self.has_mask[indices]] if self.has_mask is not None else indices
            metrics.update(lesion_scores(self.lesion_counts[with_mask]))
        if self.attribute_counts is not None:
            metrics.update(attribute_scores(self.attribute_counts[indices].sum(axis=0)))
        return metrics if only is None else {name: metrics[name] for name in only if name in metrics}

    def select(self, indices) -> "SplitPredictions":
        """The records of the images at ``indices``, in that order (samples are not kept)."""
        indices = np.asarray(indices)
        arrays = {name: getattr(self, name)[indices] for name in ARRAYS if getattr(self, name) is not None}
        return SplitPredictions(self.task, [self.image_ids[i] for i in indices], **arrays, epoch=self.epoch)

    @classmethod
    def concatenate(cls, parts: "list[SplitPredictions]") -> "SplitPredictions":
        """The records of several disjoint parts as one (e.g. cross-validation's out-of-fold
        predictions, one part per fold), images in the parts' order; samples are kept."""
        if not parts:
            raise ValueError("nothing to concatenate")
        arrays = {name: np.concatenate([getattr(p, name) for p in parts])
                  for name in ARRAYS if getattr(parts[0], name) is not None}
        return cls(parts[0].task, [i for p in parts for i in p.image_ids], **arrays,
                   samples=[s for p in parts for s in p.samples])

    def classification_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels of the labelled images."""
        labelled = self.labels >= 0
        return self.class_probabilities[labelled], self.labels[labelled]

    def save(self, path: str | Path) -> Path:
        """Write the per-image records (not the samples) to ``path`` (.npz), atomically: a new
        file replaces the old, so a hard link to the old one (a sweep checkpoint) keeps it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {name: getattr(self, name) for name in ARRAYS if getattr(self, name) is not None}
        if self.epoch is not None:
            arrays["epoch"] = np.array(self.epoch)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, task=np.array(self.task), image_ids=np.array(self.image_ids, dtype=str), **arrays)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SplitPredictions":
        """The records ``save`` wrote (no pickled objects: ``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as stored:
            epoch = int(stored["epoch"]) if "epoch" in stored else None
            return cls(str(stored["task"]), stored["image_ids"].tolist(),
                       **{name: stored[name] for name in ARRAYS if name in stored}, epoch=epoch)
