"""Metrics: counts first, then scores, with the ISIC 2018 challenge's exact definitions.

Pure functions (NumPy or torch in, numbers out) and three accumulators the training
loop feeds once per validation batch and reads once per epoch::

    >>> import numpy as np
    >>> acc = SegmentationAccumulator()
    >>> acc.update(np.array([[[0.9, 0.2], [0.8, 0.1]]]), np.array([[[1, 0], [0, 0]]]))  # per batch
    >>> round(acc.compute()["dice"], 3)                                                # per epoch
    0.667

Metric names (flat, as logged to MLflow and shown on the leaderboard):

Classification (ISIC 2018 Task 3; ``ClassificationAccumulator``)
    accuracy             share of images whose top class is right (a tie is wrong)
    balanced_accuracy    mean recall over the classes present in the truth: the Task 3 score
    precision_macro, recall_macro, f1_macro
                         unweighted mean over classes present in truth or prediction
    precision_weighted, recall_weighted, f1_weighted
                         mean weighted by each class's number of true images
    auroc                mean one-vs-rest ROC AUC over classes present in the truth
    ece                  expected calibration error, 15 equal-width bins of top-class confidence
    recall_<CLASS>, auroc_<CLASS>
                         per class in ``derm.labels.CLASSES``, for classes present in the truth

Lesion segmentation (ISIC 2018 Task 1; ``SegmentationAccumulator``)
    dice, iou            over the whole dataset, from summed pixel counts (micro)
    dice_per_image, iou_per_image
                         mean of per-image scores (an image empty in truth and prediction: 1)
    isic_task1_jaccard   per-image Jaccard, 0 below 0.65, mean over images: the Task 1 score

Attributes (ISIC 2018 Task 2; ``AttributeAccumulator``, channels in ``derm.labels.ATTRIBUTES``)
    jaccard_<attribute>, dice_<attribute>
                         of the per-image confusion matrices, each divided by its pixel count, summed
    jaccard_micro        the same over all attributes together: the Task 2 score
    dice_micro

``bootstrap_ci(statistic, n_items)`` gives percentile bootstrap intervals of metrics
recomputed on resampled images (``derm.metrics.bootstrap``).

``sweep_score(metrics, task, weights)`` turns a metrics dict into the one number a
sweep maximises. ``derm.metrics.per_image.SplitPredictions`` keeps a model's per-image
records, from which these metrics (of all images, or of a bootstrap resample) follow.
"""

from derm.metrics.bootstrap import bootstrap_ci, percentile_interval, resample_indices
from derm.metrics.classification import (
    UNDECIDED,
    ClassificationAccumulator,
    auroc_per_class,
    balanced_accuracy,
    confusion_matrix,
    expected_calibration_error,
    macro_auroc,
    precision_recall_f1,
    predicted_labels,
)
from derm.metrics.confusion import (
    ISIC_TASK1_THRESHOLD,
    binarize,
    confusion_counts,
    dice_from_counts,
    jaccard_from_counts,
    thresholded_jaccard,
    to_numpy,
)
from derm.metrics.score import DEFAULT_SCORE_WEIGHTS, sweep_score
from derm.metrics.segmentation import (
    AttributeAccumulator,
    SegmentationAccumulator,
    attribute_scores,
    lesion_scores,
    normalized_confusion_counts,
)

__all__ = [
    "AttributeAccumulator",
    "ClassificationAccumulator",
    "DEFAULT_SCORE_WEIGHTS",
    "ISIC_TASK1_THRESHOLD",
    "SegmentationAccumulator",
    "UNDECIDED",
    "attribute_scores",
    "auroc_per_class",
    "balanced_accuracy",
    "binarize",
    "bootstrap_ci",
    "confusion_counts",
    "confusion_matrix",
    "dice_from_counts",
    "expected_calibration_error",
    "jaccard_from_counts",
    "lesion_scores",
    "macro_auroc",
    "normalized_confusion_counts",
    "percentile_interval",
    "precision_recall_f1",
    "predicted_labels",
    "resample_indices",
    "sweep_score",
    "thresholded_jaccard",
    "to_numpy",
]
