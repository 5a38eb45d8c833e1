"""A model's predictions on a split, per image: from logits to the records metrics are made of.

``predict_batches`` runs a model over a loader (``output_probabilities``: sigmoid masks,
softmax classes); ``PredictionCollector`` keeps, batch by batch, the per-image records of
``derm.metrics.per_image.SplitPredictions``; ``predict_split`` does both for one model or
several, whose probabilities an ensemble averages (``average_probabilities``).
``masks_at_size`` brings mask probabilities to an image's own size, as the ISIC scorer
compares them.

    members, ensemble = predict_split([model_a, model_b], loaders["test"], device, "multitask")
    ensemble.metrics()["balanced_accuracy"]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from derm.metrics import binarize, confusion_counts, normalized_confusion_counts, to_numpy
from derm.metrics.per_image import LESION_TASKS, Sample, SplitPredictions
from derm.runtime import move_batch

# Masks are the pixels whose probability is above this (ISIC: the scorer binarises at > 128/255).
MASK_THRESHOLD = 0.5


@torch.no_grad()
def predict_batches(model, loader, device, amp_dtype=None, channels_last: bool = False,
                    forward_seconds: list[float] | None = None):
    """Yield (batch, outputs, probabilities): the model's outputs and their `output_probabilities`.

    ``forward_seconds``, when given, collects each batch's model time (data loading excluded).
    """
    model.eval()
    for batch in loader:
        batch = move_batch(batch, device, channels_last)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(batch["image"])
        if forward_seconds is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            forward_seconds.append(time.perf_counter() - started)
        yield batch, outputs, output_probabilities(outputs)


def output_probabilities(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's logits as float32 probabilities: sigmoid masks under "seg", softmax classes under "cls"."""
    probs = {}
    if "seg" in outputs:
        probs["seg"] = torch.sigmoid(outputs["seg"].float())
    if "cls" in outputs:
        probs["cls"] = torch.softmax(outputs["cls"].float(), dim=1)
    return probs


def masks_at_size(probabilities: torch.Tensor, size: tuple[int, int]) -> list[np.ndarray]:
    """(C, S, S) probabilities -> C boolean (H, W) masks: bilinear resize, then > 0.5.

    Resizing the probabilities, not the thresholded mask, keeps the edge where the
    model put it instead of a staircase of training-size pixels.
    """
    resized = F.interpolate(probabilities[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return list((resized > MASK_THRESHOLD).cpu().numpy())


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


# truth_masks(image_id) -> bool (C, H, W): an image's true masks at its original size.
TruthMasks = Callable[[str], np.ndarray]


class PredictionCollector:
    """Builds one SplitPredictions batch by batch (``add`` each batch, then ``result``)."""

    def __init__(self, task: str, keep_samples: int, truth_masks: TruthMasks | None = None):
        self.task, self.keep_samples, self.truth_masks = task, keep_samples, truth_masks
        self.ids: list[str] = []
        self.parts: dict[str, list[np.ndarray]] = {}
        self.samples: list[Sample] = []

    def add(self, batch: dict, probs: Mapping[str, torch.Tensor], arrays) -> None:
        """One batch: its probabilities (``output_probabilities``) and the cache ``arrays`` its rows index."""
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
                counts = self._counts(binarize(probs["seg"], MASK_THRESHOLD), binarize(batch["mask"], 0.5))
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
        counts = []
        for probability, row, present in zip(probabilities, rows, has_mask):
            size = tuple(int(v) for v in arrays.original_sizes[row])
            predicted = np.stack(masks_at_size(probability, size))[None]
            true = self.truth_masks(arrays.image_ids[row])[None] if present else np.zeros_like(predicted)
            counts.append(self._counts(predicted, true))
        return np.concatenate(counts)

    def result(self, epoch: int | None = None) -> SplitPredictions:
        joined = {name: np.concatenate(parts) for name, parts in self.parts.items()}
        return SplitPredictions(self.task, self.ids, joined.get("cls"), joined.get("labels"),
                                joined.get("lesion"), joined.get("attributes"), self.samples,
                                joined.get("has_mask") if self.task in LESION_TASKS else None, epoch)


def predict_split(models: Sequence[torch.nn.Module], loader, device: torch.device, task: str, *,
                  amp_dtype: torch.dtype | None = None, keep_samples: int = 8,
                  truth_masks: TruthMasks | None = None) -> tuple[list[SplitPredictions], SplitPredictions]:
    """Each member's predictions and the ensemble's (their mean) over ``loader``, per image.

    Each batch is read once and passed through every member. With one model, the
    "ensemble" is that model's own predictions. With ``truth_masks`` (image id -> its true
    masks at the original size), segmentation is scored at each image's original size.
    """
    arrays = loader.dataset.arrays
    members = [PredictionCollector(task, keep_samples, truth_masks) for _ in models]
    ensemble = PredictionCollector(task, keep_samples, truth_masks) if len(models) > 1 else members[0]
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
