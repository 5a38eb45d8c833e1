"""The names of the metrics each task reports, known without importing NumPy or torch.

Config validation runs before any heavy import, so that ``sweep.metric: dcie`` or a
``train.score_weights`` key that no task reports fails at load, in one line, instead of
after the first epoch of every trial. A test checks these names against what the
accumulators in ``derm.metrics`` and the training loop really report.
"""

from derm.errors import ConfigError
from derm.labels import ATTRIBUTES, CLASSES
from derm.model_names import suggest

CLASSIFICATION_METRICS = (
    "accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
    "precision_weighted", "recall_weighted", "f1_weighted", "auroc", "ece",
    *(f"recall_{name}" for name in CLASSES), *(f"auroc_{name}" for name in CLASSES),
)
LESION_METRICS = ("dice", "iou", "dice_per_image", "iou_per_image", "isic_task1_jaccard")
ATTRIBUTE_METRICS = (
    *(f"jaccard_{name}" for name in ATTRIBUTES), *(f"dice_{name}" for name in ATTRIBUTES),
    "jaccard_micro", "dice_micro",
)
# What every epoch of the training loop reports beside the task's metrics, worth optimising.
LOOP_METRICS = ("score", "val_loss", "inference_ms_per_image", "params_m", "images_per_second",
                "epoch_seconds")

TASK_METRICS = {
    "multitask": CLASSIFICATION_METRICS + LESION_METRICS,
    "classification": CLASSIFICATION_METRICS,
    "segmentation": LESION_METRICS,
    "attributes": ATTRIBUTE_METRICS,
}


def check_metric_name(name: str, task: str, key: str, *, loop: bool = True) -> str:
    """``name`` if task ``task`` reports it, else ConfigError naming ``key`` and the choices."""
    allowed = TASK_METRICS[task] + (LOOP_METRICS if loop else ())
    if name not in allowed:
        raise ConfigError(f"{key}: task {task} reports no metric {name!r}{suggest(name, allowed)} "
                          f"(allowed: {', '.join(allowed)})")
    return name
