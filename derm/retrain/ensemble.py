"""Predictions on an evaluation split from one model or the mean of several, kept per image.

An ensemble averages its members' probabilities, head by head: the class softmax and the
mask sigmoids (``average_probabilities``). ``predict_split`` runs every member over the
same batches once, and keeps per image what every reported number and figure needs,
never the full masks:

- class probabilities and labels (Task 3 metrics, ROC, calibration, confusion matrix);
- lesion-mask confusion counts (tp, fp, fn, tn), or per-attribute counts divided by the
  pixel count (ISIC 2018 Task 2), from which every segmentation score follows;
- a few sample images with their true and predicted masks, for the overlays.

Because metrics are recomputed from these per-image records, any subset or resample of
the images can be scored again (``SplitPredictions.metrics(indices)``), which is what the
bootstrap confidence intervals do.

    members, ensemble = predict_split([model_a, model_b], loaders["test"], device, "multitask")
    ensemble.metrics()["balanced_accuracy"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from derm.metrics import (
    ClassificationAccumulator, attribute_scores, binarize, confusion_counts, lesion_scores,
    normalized_confusion_counts, to_numpy,
)
from derm.training import predict_batches

LESION_TASKS = ("multitask", "segmentation")
CLASS_TASKS = ("multitask", "classification")


def average_probabilities(members: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The ensemble's probabilities: for each head ("cls", "seg"), the mean over members.

    Probabilities, not logits, are averaged: the mean of softmaxes is still a distribution
    over the classes, and the mean of sigmoids a per-pixel probability.

    >>> average_probabilities([{"cls": torch.tensor([[1.0, 0.0]])}, {"cls": torch.tensor([[0.5, 0.5]])}])
    {'cls': tensor([[0.7500, 0.2500]])}
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    heads = set(members[0])
    if any(set(m) != heads for m in members):
        raise ValueError(f"ensemble members predict different heads: {[sorted(m) for m in members]}")
    return {head: torch.stack([m[head].float() for m in members]).mean(dim=0) for head in members[0]}


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

    def __len__(self) -> int:
        return len(self.image_ids)

    def metrics(self, indices: np.ndarray | None = None) -> dict[str, float]:
        """The task's metrics over the images at ``indices`` (default: all; repeats count twice).

        Equal, on all images, to what ``derm.training.evaluate`` reports for the same model.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices)
        metrics: dict[str, float] = {}
        if self.class_probabilities is not None:
            labels = self.labels[indices]
            labelled = labels >= 0
            accumulator = ClassificationAccumulator()
            accumulator.update(self.class_probabilities[indices][labelled], labels[labelled])
            metrics.update(accumulator.compute())
        if self.lesion_counts is not None:
            with_mask = indices[self.has_mask[indices]] if self.has_mask is not None else indices
            metrics.update(lesion_scores(self.lesion_counts[with_mask]))
        if self.attribute_counts is not None:
            metrics.update(attribute_scores(self.attribute_counts[indices].sum(axis=0)))
        return metrics

    def classification_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and labels of the labelled images."""
        labelled = self.labels >= 0
        return self.class_probabilities[labelled], self.labels[labelled]


# truth_masks(image_id) -> bool (C, H, W): an image's true masks at its original size.
TruthMasks = Callable[[str], np.ndarray]


class _Collector:
    """Builds one SplitPredictions batch by batch."""

    def __init__(self, task: str, keep_samples: int, truth_masks: TruthMasks | None = None):
        self.task, self.keep_samples, self.truth_masks = task, keep_samples, truth_masks
        self.ids: list[str] = []
        self.parts: dict[str, list[np.ndarray]] = {}
        self.samples: list[Sample] = []

    def add(self, batch: dict, probs: Mapping[str, torch.Tensor], arrays) -> None:
        rows = to_numpy(batch["index"]).reshape(-1)
        self.ids += [arrays.image_ids[row] for row in rows]
        if "cls" in probs:
            self.parts.setdefault("cls", []).append(to_numpy(probs["cls"]).astype(np.float64))
            self.parts.setdefault("labels", []).append(to_numpy(batch["label"]).reshape(-1))
        if "seg" in probs:
            has_mask = to_numpy(batch["has_mask"]).reshape(-1).astype(bool) if "has_mask" in batch \
                else np.ones(len(rows), bool)
            self.parts.setdefault("has_mask", []).append(has_mask)
            if self.truth_masks is not None:
                counts = self._counts_at_original_size(probs["seg"], rows, has_mask, arrays)
            else:
                counts = self._counts(binarize(probs["seg"], 0.5), binarize(batch["mask"], 0.5))
            self.parts.setdefault("lesion" if self.task in LESION_TASKS else "attributes", []).append(counts)
            for i, row in enumerate(rows[: self.keep_samples - len(self.samples)]):
                self.samples.append(Sample(arrays.image_ids[row], np.array(arrays.images[row]),
                                           to_numpy(batch["mask"][i]) > 0.5,
                                           to_numpy(probs["seg"][i]).astype(np.float32)))

    def _counts(self, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
        """Per-image counts of boolean (N, C, H, W) masks: lesion (N, 4), attributes (N, C, 4) normalised."""
        if self.task in LESION_TASKS:
            return np.stack(confusion_counts(predicted[:, 0], true[:, 0]), axis=1)
        return normalized_confusion_counts(predicted, true)

    def _counts_at_original_size(self, probabilities: torch.Tensor, rows: np.ndarray, has_mask: np.ndarray,
                                 arrays) -> np.ndarray:
        """As the ISIC scorer counts: the probabilities resized to the image's own size
        (bilinear, then > 0.5, as derm.predict writes them) against the original truth."""
        from derm.inference import masks_at_size

        counts = []
        for probability, row, present in zip(probabilities, rows, has_mask):
            size = tuple(int(v) for v in arrays.original_sizes[row])
            predicted = np.stack(masks_at_size(probability, size))[None]
            true = self.truth_masks(arrays.image_ids[row])[None] if present else np.zeros_like(predicted)
            counts.append(self._counts(predicted, true))
        return np.concatenate(counts)

    def result(self) -> SplitPredictions:
        joined = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        return SplitPredictions(self.task, self.ids, joined.get("cls"), joined.get("labels"),
                                joined.get("lesion"), joined.get("attributes"), self.samples,
                                joined.get("has_mask") if self.task in LESION_TASKS else None)


def predict_split(models: Sequence[torch.nn.Module], loader, device: torch.device, task: str, *,
                  amp_dtype: torch.dtype | None = None, keep_samples: int = 8,
                  truth_masks: TruthMasks | None = None) -> tuple[list[SplitPredictions], SplitPredictions]:
    """Each member's predictions and the ensemble's (their mean) over ``loader``, per image.

    Each batch is read once and passed through every member. With one model, the
    "ensemble" is that model's own predictions. With ``truth_masks`` (image id -> its true
    masks at the original size), segmentation is scored at each image's original size.
    """
    arrays = loader.dataset.arrays
    members = [_Collector(task, keep_samples, truth_masks) for _ in models]
    ensemble = _Collector(task, keep_samples, truth_masks) if len(models) > 1 else members[0]
    for batch in loader:
        member_probs = []
        for model, collector in zip(models, members):
            # predict_batches over a one-batch "loader": the loop's own forward pass and activations.
            (_, _, probs), = predict_batches(model, [batch], device, amp_dtype)
            collector.add(batch, probs, arrays)
            member_probs.append(probs)
        if len(models) > 1:
            ensemble.add(batch, average_probabilities(member_probs), arrays)
    return [m.result() for m in members], ensemble.result()
