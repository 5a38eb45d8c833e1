"""Segmentation, classification and multitask losses, built by name from ``cfg.loss``.

`build_loss(cfg, class_counts, attribute_positive_fraction)` returns a `DermLoss`; calling
it as ``loss_fn(outputs, batch)`` gives ``(total, parts)``: the loss to back-propagate and
a dict of python floats naming its parts, for logging::

    loss, parts = loss_fn(model(batch["image"]), batch)
    parts  # {"loss_seg": 0.91, "loss_seg_dice": 0.62, "loss_seg_bce": 0.29, "loss_cls": 1.95}

``outputs`` is the model's dict ("seg" logits (B, C, H, W), "cls" logits (B, 7));
``batch`` has "mask" float (B, C, H, W) in {0, 1} and "label" int64 (B,), where -1 means
unlabelled and is ignored. An optional "has_mask" bool (B,) leaves images without a
ground-truth mask out of the segmentation loss.

Segmentation terms are SMP's losses: mode "binary" for the lesion mask, "multilabel"
for the five attribute channels. ``parts`` holds no "loss" key: the total is returned
separately.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from derm.config import LossConfig, RunConfig
from derm.labels import ATTRIBUTES, CLASSES

# An attribute seen in 1 pixel in 10,000 would otherwise get a positive weight of
# 10,000 and dominate the BCE with a handful of pixels; an absent one, infinity.
MAX_POS_WEIGHT = 100.0


def inverse_frequency_weights(class_counts: np.ndarray) -> np.ndarray:
    """Class weights ``N / (K * n_c)`` (scikit-learn's "balanced"), K = classes present.

    A training sample then weighs 1 on average. A class absent from training gets the
    largest weight of the present classes rather than 0 (or infinity): with weight 0 a
    validation batch holding only that class would make the weighted mean 0/0 = NaN.

        >>> inverse_frequency_weights(np.array([1, 3, 0, 0, 0, 0, 0])).round(3).tolist()  # 4 / (2 n)
        [2.0, 0.667, 2.0, 2.0, 2.0, 2.0, 2.0]
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.shape != (len(CLASSES),) or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"class_counts must be {len(CLASSES)} non-negative counts, not all zero; got {counts}")
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    weights[~present] = weights[present].max()
    return weights


def attribute_pos_weights(setting: str | list[float], positive_fraction: np.ndarray | None) -> np.ndarray | None:
    """Per-attribute BCE positive weights from ``loss.attribute_pos_weight``, or None.

    "auto" is negatives / positives per attribute, from the fraction of positive
    *pixels* of each attribute in the training masks, clipped to [1/100, 100].
    """
    if setting == "none":
        return None
    if setting == "auto":
        if positive_fraction is None:
            raise ValueError("attribute_pos_weight 'auto' needs attribute_positive_fraction from the training data")
        fraction = np.asarray(positive_fraction, dtype=np.float64)
        if fraction.shape != (len(ATTRIBUTES),):
            raise ValueError(f"attribute_positive_fraction must have {len(ATTRIBUTES)} values, got {fraction.shape}")
        with np.errstate(divide="ignore"):
            ratio = (1.0 - fraction) / fraction
        return np.clip(np.nan_to_num(ratio, posinf=MAX_POS_WEIGHT), 1.0 / MAX_POS_WEIGHT, MAX_POS_WEIGHT)
    return np.asarray(setting, dtype=np.float64)


# Segmentation loss terms by the names config.py validates (derm.config.SEG_LOSSES; a test
# keeps the two equal): (mode, loss config, BCE positive weights) -> SMP loss module. Mode is
# "binary" for the lesion mask, "multilabel" for the attribute channels.
SEGMENTATION_LOSSES: dict[str, Callable[[str, LossConfig, torch.Tensor | None], nn.Module]] = {
    "dice": lambda mode, cfg, pos_weight: smp.losses.DiceLoss(mode, from_logits=True),
    "jaccard": lambda mode, cfg, pos_weight: smp.losses.JaccardLoss(mode, from_logits=True),
    "bce": lambda mode, cfg, pos_weight: smp.losses.SoftBCEWithLogitsLoss(pos_weight=pos_weight, ignore_index=None),
    "focal": lambda mode, cfg, pos_weight: smp.losses.FocalLoss(mode, gamma=cfg.focal_gamma),
    "tversky": lambda mode, cfg, pos_weight: smp.losses.TverskyLoss(
        mode, from_logits=True, alpha=cfg.tversky_alpha, beta=cfg.tversky_beta),
    "lovasz": lambda mode, cfg, pos_weight: smp.losses.LovaszLoss(mode, per_image=False, from_logits=True),
}


def segmentation_term(name: str, mode: str, cfg: LossConfig, pos_weight: torch.Tensor | None) -> nn.Module:
    """One SMP segmentation loss by its config name (a key of ``SEGMENTATION_LOSSES``)."""
    return SEGMENTATION_LOSSES[name](mode, cfg, pos_weight)


class SegmentationLoss(nn.Module):
    """Weighted sum of SMP losses; returns (total, {term name: unweighted value})."""

    def __init__(self, weights: dict[str, float], mode: str, cfg: LossConfig,
                 pos_weight: np.ndarray | None = None):
        super().__init__()
        pw = None
        if pos_weight is not None:
            # (C, 1, 1) so that it broadcasts over the channel axis, not over width.
            pw = torch.as_tensor(pos_weight, dtype=torch.float32).view(-1, 1, 1)
        self.weights = {name: w for name, w in weights.items() if w > 0}
        self.terms = nn.ModuleDict({name: segmentation_term(name, mode, cfg, pw) for name in self.weights})

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = {name: term(logits, target) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        return total, values


class ClassificationLoss(nn.Module):
    """Cross-entropy or focal loss over labelled samples (label -1 is ignored).

    Focal is written over cross-entropy with the same class weights and label
    smoothing: each sample's (weighted, smoothed) CE times ``(1 - p_true) ** gamma``,
    normalised like PyTorch's weighted mean (by the summed weights of the targets), so
    gamma 0 gives exactly the cross-entropy.
    """

    def __init__(self, kind: str = "ce", gamma: float = 2.0, label_smoothing: float = 0.0,
                 class_weights: np.ndarray | None = None):
        super().__init__()
        self.kind, self.gamma, self.label_smoothing = kind, gamma, label_smoothing
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labelled = labels >= 0
        if not bool(labelled.any()):
            return logits.sum() * 0.0  # keeps the graph; an all-unlabelled batch adds nothing
        logits, labels = logits[labelled], labels[labelled]
        if self.kind == "ce":
            return F.cross_entropy(logits, labels, weight=self.class_weights,
                                   label_smoothing=self.label_smoothing)
        per_sample = F.cross_entropy(logits, labels, weight=self.class_weights,
                                     label_smoothing=self.label_smoothing, reduction="none")
        p_true = logits.softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
        focal = (1.0 - p_true).clamp_min(0.0) ** self.gamma * per_sample
        if self.class_weights is None:
            return focal.mean()
        return focal.sum() / self.class_weights[labels].sum()


class DermLoss(nn.Module):
    """The task's loss: segmentation, classification, or both weighted together.

    Multitask weighting is "fixed" (``seg_weight * seg + cls_weight * cls``) or
    "uncertainty" (Kendall, Gal & Cipolla 2018, "Multi-task learning using uncertainty
    to weigh losses"): ``sum_i exp(-s_i) * L_i + s_i`` with learnable log-variances
    ``s_i`` (parameters of this module; the optimiser must include them). With
    uncertainty weighting the fixed weights are not used. Single-task losses are not
    weighted.
    """

    def __init__(self, seg: SegmentationLoss | None, cls: ClassificationLoss | None,
                 weighting: str = "fixed", seg_weight: float = 1.0, cls_weight: float = 1.0):
        super().__init__()
        self.seg, self.cls = seg, cls
        self.seg_weight, self.cls_weight = seg_weight, cls_weight
        both = seg is not None and cls is not None
        self.log_vars = nn.Parameter(torch.zeros(2)) if both and weighting == "uncertainty" else None

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        parts: dict[str, torch.Tensor] = {}
        if self.seg is not None:
            parts["loss_seg"], terms = self._segmentation(outputs["seg"].float(), batch)
            parts.update({f"loss_seg_{name}": value for name, value in terms.items()})
        if self.cls is not None:
            parts["loss_cls"] = self.cls(outputs["cls"].float(), batch["label"])
        total = self._combine(parts)
        if self.log_vars is not None:
            parts["task_weight_seg"], parts["task_weight_cls"] = torch.exp(-self.log_vars)
        # One device-to-host copy for all parts instead of one sync per .item().
        values = torch.stack([v.detach().float() for v in parts.values()]).tolist()
        return total, dict(zip(parts, values))

    def _segmentation(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = batch["mask"].float()
        if target.shape != logits.shape:
            raise ValueError(f"batch mask has shape {tuple(target.shape)} but the model predicts "
                             f"{tuple(logits.shape)}; the dataset must provide a mask channel per output")
        if "has_mask" in batch:
            keep = batch["has_mask"].bool()
            if not bool(keep.any()):
                zero = logits.sum() * 0.0
                return zero, {name: zero for name in self.seg.terms}
            logits, target = logits[keep], target[keep]
        return self.seg(logits, target)

    def _combine(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.seg is None:
            return parts["loss_cls"]
        if self.cls is None:
            return parts["loss_seg"]
        if self.log_vars is None:
            return self.seg_weight * parts["loss_seg"] + self.cls_weight * parts["loss_cls"]
        losses = torch.stack([parts["loss_seg"], parts["loss_cls"]])
        return (torch.exp(-self.log_vars) * losses + self.log_vars).sum()


def build_loss(cfg: RunConfig, class_counts: np.ndarray | None = None,
               attribute_positive_fraction: np.ndarray | None = None) -> DermLoss:
    """The loss for ``cfg.task`` from ``cfg.loss``.

    ``class_counts`` (training images per class, CLASSES order) is needed for
    ``class_weights: inverse_frequency``; ``attribute_positive_fraction`` (fraction of
    positive pixels per attribute, ATTRIBUTES order) for ``attribute_pos_weight: auto``.
    """
    loss = cfg.loss
    seg = None
    if cfg.task in ("segmentation", "multitask"):
        seg = SegmentationLoss(loss.seg, "binary", loss)
    elif cfg.task == "attributes":
        pos_weight = attribute_pos_weights(loss.attribute_pos_weight, attribute_positive_fraction)
        seg = SegmentationLoss(loss.seg, "multilabel", loss, pos_weight)
    cls = None
    if cfg.task in ("classification", "multitask"):
        weights = None
        if loss.class_weights == "inverse_frequency":
            if class_counts is None:
                raise ValueError("class_weights 'inverse_frequency' needs class_counts from the training data")
            weights = inverse_frequency_weights(class_counts)
        cls = ClassificationLoss(loss.cls, loss.focal_gamma, loss.label_smoothing, weights)
    return DermLoss(seg, cls, loss.task_weighting, loss.seg_weight, loss.cls_weight)


__all__ = [
    "ClassificationLoss", "DermLoss", "MAX_POS_WEIGHT", "SEGMENTATION_LOSSES", "SegmentationLoss", "attribute_pos_weights",
    "build_loss", "inverse_frequency_weights", "segmentation_term",
]
