"""A model's predictions on a split, per image: from logits to the records metrics are made of.

``predict_batches`` runs a model over a loader (``output_probabilities``: sigmoid masks,
softmax classes); ``PredictionCollector`` keeps, batch by batch, the per-image records of
``derm.metrics.per_image.SplitPredictions``; ``predict_split`` does both for one model or
several, whose probabilities an ensemble averages (``average_probabilities``).
``masks_at_size`` brings mask probabilities to an image's own size, as the ISIC scorer
compares them (``probabilities_at_size`` stops before thresholding).

    members, ensemble = predict_split([model_a, model_b], loaders["test"], device, "multitask")
    ensemble.metrics()["balanced_accuracy"]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from derm.data.preprocess import Resize
from derm.metrics import binarize, confusion_counts, normalized_confusion_counts, to_numpy
from derm.metrics.per_image import LESION_TASKS, Sample, SplitPredictions
from derm.postprocess import MaskPostprocess
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
            outputs = model(batch["image"], metadata=batch.get("metadata"))
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


def probabilities_at_size(probabilities: torch.Tensor, size: tuple[int, int],
                          geometry: Resize | None = None) -> np.ndarray:
    """(C, S, S) mask probabilities -> float32 (C, H, W) at ``size`` (H, W), resized bilinearly.

    Resizing the probabilities, not the thresholded mask, keeps the edge where the
    model put it instead of a staircase of training-size pixels. ``geometry`` is how the
    image was brought to S x S (``data.resize``; default squash): its exact inverse is used
    (pad's bars removed, center_crop's cut borders background; `derm.data.preprocess`).
    """
    geometry = geometry or Resize("squash", probabilities.shape[-1])
    return geometry.inverse(probabilities, size).cpu().numpy()


def masks_at_size(probabilities: torch.Tensor, size: tuple[int, int],
                  geometry: Resize | None = None) -> list[np.ndarray]:
    """(C, S, S) probabilities -> C boolean (H, W) masks: `probabilities_at_size`, then > 0.5."""
    return list(probabilities_at_size(probabilities, size, geometry) > MASK_THRESHOLD)


def average_probabilities(members: Sequence[Mapping[str, torch.Tensor]],
                          weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The ensemble's probabilities: for each head ("cls", "seg"), the mean over members,
    weighted by `weights` (normalised to sum to 1; None: equal, as a fold ensemble).

    Probabilities, not logits, are averaged: the mean of softmaxes is still a distribution
    over the classes, and the mean of sigmoids a per-pixel probability.

    >>> average_probabilities([{"cls": torch.tensor([[1.0, 0.0]])}, {"cls": torch.tensor([[0.5, 0.5]])}])
    {'cls': tensor([[0.7500, 0.2500]])}
    >>> average_probabilities([{"cls": torch.tensor([[1.0, 0.0]])}, {"cls": torch.tensor([[0.5, 0.5]])}], [3, 1])
    {'cls': tensor([[0.8750, 0.1250]])}
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    heads = set(members[0])
    if any(set(m) != heads for m in members):
        raise ValueError(f"ensemble members predict different heads: {[sorted(m) for m in members]}")
    if weights is None:
        return {head: torch.stack([m[head].float() for m in members]).mean(dim=0) for head in members[0]}
    if len(weights) != len(members):
        raise ValueError(f"{len(members)} ensemble members need {len(members)} weights, got {len(weights)}")
    share = [float(w) / float(sum(weights)) for w in weights]
    return {head: sum(w * m[head].float() for w, m in zip(share, members)) for head in members[0]}


# truth_masks(image_id) -> bool (C, H, W): an image's true masks at its original size.
TruthMasks = Callable[[str], np.ndarray]


class PredictionCollector:
    """Builds one SplitPredictions batch by batch (``add`` each batch, then ``result``)."""

    def __init__(self, task: str, keep_samples: int, truth_masks: TruthMasks | None = None,
                 postprocess: MaskPostprocess | None = None):
        self.task, self.keep_samples, self.truth_masks = task, keep_samples, truth_masks
        self.postprocess = postprocess  # threshold and clean-up chosen on validation; None: > 0.5
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
            elif self.postprocess is None:
                counts = self._counts(binarize(probs["seg"], MASK_THRESHOLD), binarize(batch["mask"], 0.5))
            else:
                predicted = np.stack([self.postprocess.binarise(p) for p in to_numpy(probs["seg"])])
                counts = self._counts(predicted, binarize(batch["mask"], 0.5))
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
        """As the ISIC scorer counts: the probabilities brought to the image's own size
        through the inverse of the cache's geometry (bilinear, then > 0.5, as derm.predict
        writes them) against the original truth."""
        counts = []
        for probability, row, present in zip(probabilities, rows, has_mask):
            size = tuple(int(v) for v in arrays.original_sizes[row])
            if self.postprocess is None:
                predicted = np.stack(masks_at_size(probability, size, arrays.geometry))[None]
            else:
                at_size = probabilities_at_size(probability, size, arrays.geometry)
                predicted = np.stack(self.postprocess.binarise(at_size))[None]
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
                  truth_masks: TruthMasks | None = None,
                  weights: Sequence[float] | None = None,
                  postprocess: MaskPostprocess | None = None) -> tuple[list[SplitPredictions], SplitPredictions]:
    """Each member's predictions and the ensemble's (their mean, weighted by ``weights`` when
    given) over ``loader``, per image.

    Each batch is read once and passed through every member. With one model, the
    "ensemble" is that model's own predictions. With ``truth_masks`` (image id -> its true
    masks at the original size), segmentation is scored at each image's original size. With
    ``postprocess`` (a `derm.postprocess.MaskPostprocess` chosen on validation), masks are
    thresholded and cleaned as ``derm.predict`` does for that model.
    """
    arrays = loader.dataset.arrays
    members = [PredictionCollector(task, keep_samples, truth_masks, postprocess) for _ in models]
    ensemble = PredictionCollector(task, keep_samples, truth_masks, postprocess) if len(models) > 1 else members[0]
    for batch in loader:
        member_probs = []
        for model, collector in zip(models, members):
            # predict_batches over a one-batch "loader": the loop's own forward pass and activations.
            (_, _, probs), = predict_batches(model, [batch], device, amp_dtype)
            collector.add(batch, probs, arrays)
            member_probs.append(probs)
        if len(models) > 1:
            ensemble.add(batch, average_probabilities(member_probs, weights), arrays)
    return [m.result() for m in members], ensemble.result()
