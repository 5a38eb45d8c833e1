"""Figures and text reports of a model's predictions on the test split.

``write_report(predictions, folder)`` writes every file that applies to the task:

| file | tasks | what |
|---|---|---|
| classification_report.txt | multitask, classification | per-class precision, recall, F1, support (scikit-learn) |
| confusion_matrix.png | multitask, classification | counts and row-normalised (recall) side by side |
| roc_curves.png | multitask, classification | one-vs-rest ROC per class, AUC in the legend |
| calibration.png | multitask, classification | reliability diagram of the top-class confidence, with ECE |
| attributes.png | attributes | Jaccard and Dice per ISIC 2018 Task 2 attribute |
| overlays/<image>.png | multitask, segmentation | true (green) and predicted (red) lesion outlines |

``write_ensemble_table`` (ensemble.md) and ``format_summary`` (the console lines) report a
retrain-best summary (the dict in metrics.json) by its ``HEADLINE_METRICS``.

Figures use matplotlib's object API (``Figure``, rendered by Agg), so no GUI backend and
no global pyplot state is touched; curves come from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from sklearn.calibration import calibration_curve
from sklearn.metrics import auc, classification_report, roc_curve

from derm.labels import ATTRIBUTES, CLASSES
from derm.metrics import confusion_matrix, dice_from_counts, expected_calibration_error, predicted_labels
from derm.metrics.classification import ECE_BINS
from derm.metrics.per_image import CLASS_TASKS, LESION_TASKS, Sample, SplitPredictions
from derm.figures import new_figure, safe_file_stem, save_figure
from derm.text_formats import pipe_table

TRUTH_COLOUR, PREDICTION_COLOUR = "lime", "red"

# The metrics a report leads with (and bootstraps), per task; the sweep's score comes first.
HEADLINE_METRICS = {
    "classification": ("balanced_accuracy", "accuracy", "f1_macro", "auroc", "ece"),
    "segmentation": ("dice", "iou", "dice_per_image", "isic_task1_jaccard"),
    "attributes": ("jaccard_micro", "dice_micro"),
}
HEADLINE_METRICS["multitask"] = HEADLINE_METRICS["classification"] + HEADLINE_METRICS["segmentation"]


def classification_report_text(probabilities: np.ndarray, labels: np.ndarray) -> str:
    """scikit-learn's per-class table for the seven classes (a tied top probability is no class)."""
    return classification_report(labels, predicted_labels(probabilities), labels=list(range(len(CLASSES))),
                                 target_names=list(CLASSES), digits=3, zero_division=0)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the class's recall on the diagonal); empty rows stay 0."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)


def plot_confusion_matrix(counts: np.ndarray, path: Path) -> Path:
    """Counts and row-normalised confusion matrices side by side (rows truth, columns prediction)."""
    figure = new_figure((13, 5.5))
    for ax, values, title, fmt in zip(figure.subplots(1, 2), (counts, row_normalised(counts)),
                                      ("counts", "normalised by true class"), ("{:d}", "{:.2f}")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-9))
        figure.colorbar(image, ax=ax, shrink=0.8)
        for (row, column), value in np.ndenumerate(values):
            ax.text(column, row, fmt.format(int(value) if fmt == "{:d}" else value), ha="center", va="center",
                    color="white" if value > values.max() / 2 else "black", fontsize=8)
        ax.set(xticks=range(len(CLASSES)), yticks=range(len(CLASSES)), xticklabels=CLASSES, yticklabels=CLASSES,
               xlabel="predicted", ylabel="true", title=f"Confusion matrix ({title})")
    return save_figure(figure, path)


def plot_roc_curves(probabilities: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """One-vs-rest ROC curve per class present in the truth (and not alone), AUC in the legend."""
    figure = new_figure((6.5, 6))
    ax = figure.subplots()
    for k, name in enumerate(CLASSES):
        is_class = labels == k
        if is_class.any() and not is_class.all():
            fpr, tpr, _ = roc_curve(is_class, probabilities[:, k])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f}, n={int(is_class.sum())})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02),
           title="ROC curves, one class vs rest (test split)")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(figure, path)


def plot_calibration(probabilities: np.ndarray, labels: np.ndarray, path: Path, n_bins: int = ECE_BINS) -> Path:
    """Reliability diagram of the top-class confidence (accuracy per confidence bin), with ECE."""
    confidence = probabilities.max(axis=1)
    correct = (predicted_labels(probabilities) == labels).astype(int)
    ece = expected_calibration_error(probabilities, labels, n_bins)
    # pos_label: a test set where every prediction is right (or wrong) still has a curve.
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform",
                                                  pos_label=1)
    figure = new_figure((6, 7))
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    top.plot(mean_confidence, accuracy, marker="o", label="model")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
            title=f"Reliability diagram (ECE {ece:.3f}, {n_bins} bins, n={len(labels)})")
    top.legend(loc="upper left")
    bottom.hist(confidence, bins=np.linspace(0, 1, n_bins + 1), color="tab:blue", alpha=0.7)
    bottom.set(xlabel="top-class confidence", ylabel="images")
    return save_figure(figure, path)


def plot_attribute_scores(metrics: dict[str, float], path: Path) -> Path:
    """Grouped bars of Jaccard and Dice per Task 2 attribute, with the micro averages."""
    names = [*ATTRIBUTES, "micro"]
    positions = np.arange(len(names))
    figure = new_figure((9, 4.5))
    ax = figure.subplots()
    for offset, score in ((-0.2, "jaccard"), (0.2, "dice")):
        values = [metrics[f"{score}_{name}"] for name in names]
        bars = ax.bar(positions + offset, values, width=0.4, label=score.capitalize())
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set(xticks=positions, xticklabels=[n.replace("_", " ") for n in names], ylim=(0, 1.1),
           ylabel="score", title="ISIC 2018 Task 2 attributes (test split)")
    ax.legend()
    return save_figure(figure, path)


def plot_overlay(sample: Sample, path: Path) -> Path:
    """The image with the true (green) and predicted (red) lesion outlines, Dice in the title."""
    truth, predicted = sample.true_mask[0], sample.probability[0] > 0.5
    counts = (np.sum(truth & predicted), np.sum(~truth & predicted), np.sum(truth & ~predicted))
    figure = new_figure((4, 4.3))
    ax = figure.subplots()
    ax.imshow(sample.image, interpolation="nearest")
    for mask, colour in ((truth, TRUTH_COLOUR), (predicted, PREDICTION_COLOUR)):
        if mask.any() and not mask.all():  # a constant mask has no outline
            ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.5)
    ax.set_axis_off()
    ax.set_title(f"{sample.image_id}  Dice {float(dice_from_counts(*counts)):.2f}", fontsize=9)
    ax.legend(handles=[Line2D([], [], color=TRUTH_COLOUR, label="truth"),
                       Line2D([], [], color=PREDICTION_COLOUR, label="prediction")],
              loc="lower right", fontsize=7)
    return save_figure(figure, path)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table of ``frame``, floats to ``digits`` decimals."""
    def cell(value) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    return pipe_table(frame.columns, ([cell(v) for v in row] for row in frame.itertuples(index=False)))


def write_report(predictions: SplitPredictions, folder: str | Path) -> list[Path]:
    """Every report file that applies to ``predictions.task``, written into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if predictions.task in CLASS_TASKS:
        probabilities, labels = predictions.classification_arrays()
        report = folder / "classification_report.txt"
        report.write_text(classification_report_text(probabilities, labels))
        counts = confusion_matrix(predicted_labels(probabilities), labels, len(CLASSES))
        written += [report, plot_confusion_matrix(counts, folder / "confusion_matrix.png"),
                    plot_roc_curves(probabilities, labels, folder / "roc_curves.png"),
                    plot_calibration(probabilities, labels, folder / "calibration.png")]
    if predictions.task == "attributes":
        written.append(plot_attribute_scores(predictions.metrics(), folder / "attributes.png"))
    if predictions.task in LESION_TASKS:
        written += write_overlays(predictions.samples, folder / "overlays")
    return written


def write_ensemble_table(summary: dict[str, Any], path: Path) -> Path:
    """ensemble.md: the ensemble and each of its members on the test split, headline metrics,
    then the ensemble's 95% intervals and how they were drawn."""
    names = ["score", *HEADLINE_METRICS[summary["task"]]]
    ensemble = summary["ensemble"]
    rows = [{"model": "ensemble (mean probabilities)", **{n: ensemble["metrics"].get(n) for n in names}}]
    rows += [{"model": f"{m['label']} {m['model']} ({m['epochs']} epoch{'s' * (m['epochs'] != 1)})",
              **{n: m["test_metrics"].get(n) for n in names}} for m in summary["members"]]
    text = (f"# Ensemble of {len(summary['members'])} models on the test split "
            f"({summary['test_images']} images)\n\n" + markdown_table(pd.DataFrame(rows)))
    intervals = [f"{n} {_interval(ensemble['ci95'], n)}" for n in names if _interval(ensemble["ci95"], n)]
    if intervals:
        text += f"\nThe ensemble's 95% intervals: {', '.join(intervals)}.\n\n{bootstrap_line(summary)}.\n"
    if "selection" in summary:
        text += "\n" + selection_text(summary["selection"])
    path.write_text(text)
    return path


def selection_text(selection: dict[str, Any]) -> str:
    """ensemble.md's section on the members' weights and what they gained over the best single one."""
    text = f"## Weights\n\n{selection['method']}.\n\n" + markdown_table(pd.DataFrame(
        [{"member": name, "weight": weight} for name, weight in selection["weights"].items()]))
    for where, title in (("validation", "validation split (where the weights were chosen)"),
                         ("test", "test split")):
        if where in selection:
            part = selection[where]
            text += (f"\nOn the {title}: {part['metric']} {part['ensemble']:.4f} for the ensemble, "
                     f"{part['best_single']:.4f} for the best single member ({part['best_single_member']}), "
                     f"gain {part['gain']:+.4f}.\n")
    return text


def bootstrap_line(summary: dict[str, Any]) -> str:
    """How a retrain-best summary's intervals were drawn, and of which estimate.

    >>> line = bootstrap_line({"bootstrap": {"resamples": 1000, "seed": 0, "method": "stratified by true class",
    ...                                      "of": "the mean over 3 seeds' models"}})
    >>> print(line.replace(", of", ",\\nof"))
    95% intervals: stratified percentile bootstrap over test images by true class (1000 resamples, seed 0),
    of the mean over 3 seeds' models
    """
    bootstrap = summary["bootstrap"]
    # metrics.json written before the method was recorded came from the plain image bootstrap.
    kind = ("stratified percentile bootstrap over test images by true class"
            if bootstrap.get("method") == "stratified by true class" else "percentile bootstrap over test images")
    text = f"95% intervals: {kind} ({bootstrap['resamples']} resamples, seed {bootstrap['seed']})"
    return f"{text}, of {bootstrap['of']}" if bootstrap.get("of") else text


def format_summary(summary: dict[str, Any]) -> str:
    """Console lines: each member's headline test metrics, then the estimate and its 95% interval:
    the mean over seeds ± their standard deviation (one configuration) or the ensemble's
    metric, and a line saying how the interval was drawn and of which estimate."""
    names = ["score", *HEADLINE_METRICS[summary["task"]]]
    table = pd.DataFrame([{"member": m["label"], **{n: m["test_metrics"].get(n) for n in names}}
                          for m in summary["members"]])
    lines = [f"test split: {summary['test_images']} images", table.to_string(index=False, float_format="%.4f")]
    if summary["mode"] == "single":
        central, spread, ci = summary["mean"], summary["std"], summary["ci95"]
        seeds = len(summary["members"])
        title = f"mean over {seeds} seeds ± std over seeds" if seeds > 1 else "one seed"
    else:
        central, spread, ci = summary["ensemble"]["metrics"], {}, summary["ensemble"]["ci95"]
        title = "ensemble (mean probabilities)"
    if summary["mode"] == "cross-validation":
        lines += cross_validation_lines(summary, names)
        title = f"fold ensemble of {summary['cross_validation']['folds']} models (mean probabilities), test split"
    lines.append(f"{title}{', 95% interval of the same' if ci else ''}:")
    for name in names:
        if central.get(name) is None:
            continue
        text = f"  {name} {central[name]:.4f}"
        text += f" ± {spread[name]:.4f}" if spread.get(name) is not None else ""
        text += f", 95% CI {_interval(ci, name)}" if _interval(ci, name) else ""
        lines.append(text)
    if ci:
        lines.append(bootstrap_line(summary))
    return "\n".join(lines)


def cross_validation_lines(summary: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The out-of-fold estimate with its interval and each fold's score on its held-out images."""
    cv = summary["cross_validation"]
    oof, ci = cv["out_of_fold"]["metrics"], cv["out_of_fold"]["ci95"]
    lines = [f"out-of-fold, {cv['folds']} folds over {cv['out_of_fold_images']} train+val images "
             f"(grouped by lesion, stratified by diagnosis){', 95% interval' if ci else ''}:"]
    for name in names:
        if oof.get(name) is not None:
            interval = _interval(ci, name)
            lines.append(f"  {name} {oof[name]:.4f}" + (f", 95% CI {interval}" if interval else ""))
    per_fold = ", ".join(f"fold {f['fold']} {f['metrics']['score']:.4f} ({f['images']} images)" for f in cv["per_fold"])
    lines.append(f"  score per fold: {per_fold}")
    chosen = summary.get("chosen_on_out_of_fold", {})
    if "postprocess" in chosen:
        pp = chosen["postprocess"]
        what = (f"attribute thresholds {', '.join(f'{v:g}' for v in pp['attribute_thresholds'])}"
                if pp.get("attribute_thresholds") else f"mask threshold {pp['threshold']:g}, {pp['mode']}")
        lines.append(f"chosen on out-of-fold predictions (applied to the test masks and by derm.predict): {what}")
    if "calibration" in chosen:
        calibration = chosen["calibration"]
        lines.append(f"temperature {calibration['temperature']:.3f} (fitted on out-of-fold diagnoses): test ECE "
                     f"{calibration['test_ece_before']:.4f} before, {calibration['test_ece_after']:.4f} after")
        for name, value in calibration["melanoma"].items():
            low, high = value["ci95"]
            interval = f", 95% CI [{low:.4f}, {high:.4f}]" if low is not None and high is not None else ""
            shown = "nan" if value["value"] is None else f"{value['value']:.4f}"
            lines.append(f"  {name.replace('_', ' ')} {shown}{interval}")
    return lines


def _interval(ci: dict[str, list], name: str) -> str:
    bounds = ci.get(name)
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]" if bounds and None not in bounds else ""


def write_overlays(samples: Sequence[Sample], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [plot_overlay(sample, folder / f"{safe_file_stem(sample.image_id, 'image')}.png") for sample in samples]
