"""Report files for each task, from hand-made per-image predictions."""

import numpy as np
import pandas as pd
import pytest

from derm.labels import ATTRIBUTES
from derm.metrics.per_image import Sample, SplitPredictions
from derm.figures import safe_file_stem
from derm.retrain.report import (
    bootstrap_line, classification_report_text, format_summary, markdown_table, plot_calibration, row_normalised,
    write_ensemble_table, write_report,
)

# Six images: MEL, NV, NV, BCC, MEL, NV; predicted MEL, NV, MEL, BCC, NV, NV.
PROBABILITIES = np.array([
    [0.7, 0.2, 0.1, 0, 0, 0, 0],
    [0.1, 0.8, 0.1, 0, 0, 0, 0],
    [0.5, 0.4, 0.1, 0, 0, 0, 0],
    [0.1, 0.1, 0.8, 0, 0, 0, 0],
    [0.3, 0.6, 0.1, 0, 0, 0, 0],
    [0.2, 0.7, 0.1, 0, 0, 0, 0],
])
LABELS = np.array([0, 1, 1, 2, 0, 1])


def predictions(task: str, **fields) -> SplitPredictions:
    return SplitPredictions(task, [f"ISIC_{i:07d}" for i in range(6)], **fields)


def test_classification_tasks_write_the_report_and_three_figures(tmp_path):
    written = write_report(predictions("classification", class_probabilities=PROBABILITIES, labels=LABELS), tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["calibration.png", "classification_report.txt", "confusion_matrix.png", "roc_curves.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written if p.suffix == ".png")
    assert not (tmp_path / "overlays").exists() and not (tmp_path / "attributes.png").exists()


def test_the_classification_report_is_scikit_learns_by_hand():
    lines = {line.split()[0]: line.split()[1:] for line in classification_report_text(PROBABILITIES, LABELS)
             .splitlines() if line.strip()}
    # MEL: predicted for images 0 and 2, right once -> precision 1/2; recall 1/2 (images 0, 4); F1 0.5; support 2
    assert lines["MEL"] == ["0.500", "0.500", "0.500", "2"]
    # NV: predicted for 1, 4, 5, right for 1 and 5 -> precision 2/3; recall 2/3; support 3
    assert lines["NV"] == ["0.667", "0.667", "0.667", "3"]
    assert lines["BCC"] == ["1.000", "1.000", "1.000", "1"]
    assert lines["VASC"][-1] == "0"


def test_row_normalised_confusion_matrix_by_hand():
    counts = np.array([[3, 1], [0, 0]])
    np.testing.assert_allclose(row_normalised(counts), [[0.75, 0.25], [0.0, 0.0]])


def test_the_calibration_figure_takes_a_model_that_is_always_right(tmp_path):
    right = np.eye(7)[[0, 1, 2]] * 0.9 + 0.1 / 7
    assert plot_calibration(right, np.array([0, 1, 2]), tmp_path / "c.png").is_file()


def test_attribute_sweeps_write_attribute_bars_only(tmp_path):
    counts = np.zeros((6, len(ATTRIBUTES), 4))
    counts[..., 0], counts[..., 3] = 0.25, 0.75  # every attribute found exactly
    written = write_report(predictions("attributes", attribute_counts=counts), tmp_path)
    assert [p.name for p in written] == ["attributes.png"]


def test_segmentation_writes_one_overlay_per_sample_inside_the_folder(tmp_path):
    truth = np.zeros((1, 8, 8), bool)
    truth[0, 2:6, 2:6] = True
    samples = [Sample(image_id, np.full((8, 8, 3), 120, np.uint8), truth, truth * 0.9)
               for image_id in ("ISIC_0000001", "../../escape")]
    written = write_report(predictions("segmentation", lesion_counts=np.zeros((6, 4), int), samples=samples), tmp_path)
    assert sorted(p.name for p in written) == ["ISIC_0000001.png", "_.._escape.png"]
    assert all(p.parent == tmp_path / "overlays" for p in written)
    assert safe_file_stem("a/b c") == "a_b_c"


def test_markdown_table_by_hand():
    table = markdown_table(pd.DataFrame([{"model": "ensemble", "dice": 0.81234}, {"model": "m1", "dice": 0.5}]), 2)
    assert table == "| model | dice |\n|---|---|\n| ensemble | 0.81 |\n| m1 | 0.50 |\n"


@pytest.mark.parametrize("image_id", ["..", "."])
def test_dot_names_do_not_escape(image_id):
    assert "/" not in safe_file_stem(image_id) and safe_file_stem(image_id) not in ("", ".", "..")


def retrain_summary(task: str, mode: str = "single", resamples: int = 1000) -> dict:
    """A retrain-best summary (metrics.json) for two models, score and dice only."""
    members = [{"label": f"rank{r}-seed{s}", "model": "unet-resnet18", "epochs": 3,
                "test_metrics": {"score": 0.60 + 0.02 * i, "dice": 0.70 + 0.02 * i}}
               for i, (r, s) in enumerate([(1, 0), (1, 1)] if mode == "single" else [(1, 0), (2, 0)])]
    ci = {"score": [0.55, 0.66], "dice": [0.65, 0.76]} if resamples else {}
    method = "stratified by true class" if task in ("multitask", "classification") else "images"
    summary = {"task": task, "mode": mode, "test_images": 60, "members": members,
               "bootstrap": {"resamples": resamples, "seed": 0, "confidence": 0.95, "interval": "percentile",
                             "method": method, "of": "the mean over 2 seeds' models" if mode == "single"
                             else "the ensemble of 2 models (mean probabilities)"}}
    if mode == "single":
        summary.update({"mean": {"score": 0.61, "dice": 0.71}, "std": {"score": 0.0141, "dice": 0.0141}, "ci95": ci})
    else:
        summary["ensemble"] = {"metrics": {"score": 0.62, "dice": 0.72}, "ci95": ci}
    return summary


def test_format_summary_says_what_the_interval_is_of_and_how_it_was_drawn():
    lines = format_summary(retrain_summary("multitask")).splitlines()
    assert "mean over 2 seeds ± std over seeds, 95% interval of the same:" in lines
    assert "  dice 0.7100 ± 0.0141, 95% CI [0.6500, 0.7600]" in lines
    assert lines[-1] == ("95% intervals: stratified percentile bootstrap over test images by true class "
                         "(1000 resamples, seed 0), of the mean over 2 seeds' models")
    segmentation = format_summary(retrain_summary("segmentation")).splitlines()
    assert segmentation[-1] == ("95% intervals: percentile bootstrap over test images (1000 resamples, seed 0), "
                                "of the mean over 2 seeds' models")


def test_format_summary_of_an_ensemble_gives_the_ensembles_interval():
    lines = format_summary(retrain_summary("multitask", mode="ensemble")).splitlines()
    assert "ensemble (mean probabilities), 95% interval of the same:" in lines
    assert "  dice 0.7200, 95% CI [0.6500, 0.7600]" in lines
    assert lines[-1].endswith("by true class (1000 resamples, seed 0), "
                              "of the ensemble of 2 models (mean probabilities)")


def test_without_resamples_no_interval_and_no_method_line_is_printed():
    text = format_summary(retrain_summary("multitask", resamples=0))
    assert "95%" not in text and "mean over 2 seeds ± std over seeds:" in text


def test_a_summary_written_before_the_method_was_recorded_reads_as_the_image_bootstrap():
    summary = retrain_summary("multitask")
    summary["bootstrap"] = {"resamples": 200, "seed": 3, "confidence": 0.95, "interval": "percentile"}
    assert bootstrap_line(summary) == "95% intervals: percentile bootstrap over test images (200 resamples, seed 3)"


def test_ensemble_table_states_the_bootstrap_under_the_intervals(tmp_path):
    text = write_ensemble_table(retrain_summary("multitask", mode="ensemble"), tmp_path / "ensemble.md").read_text()
    assert "The ensemble's 95% intervals: score [0.5500, 0.6600], dice [0.6500, 0.7600]." in text
    assert text.rstrip().endswith("stratified percentile bootstrap over test images by true class (1000 resamples, "
                                  "seed 0), of the ensemble of 2 models (mean probabilities).")
