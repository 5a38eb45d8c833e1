"""derm.metrics: hand-computed cases, scikit-learn and the official ISIC scorer as references."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from isic_challenge_scoring.segmentation import SegmentationScore
from sklearn import metrics as skm

from derm.errors import ConfigError, DataError
from derm.labels import ATTRIBUTES, CLASSES
from derm.metrics import (
    UNDECIDED,
    AttributeAccumulator,
    ClassificationAccumulator,
    SegmentationAccumulator,
    balanced_accuracy,
    confusion_counts,
    dice_from_counts,
    expected_calibration_error,
    jaccard_from_counts,
    macro_auroc,
    predicted_labels,
    sweep_score,
    thresholded_jaccard,
)


def one_hot_probs(rows):
    """7-class probability rows from {class index: probability} dicts."""
    probs = np.zeros((len(rows), 7))
    for i, row in enumerate(rows):
        for k, p in row.items():
            probs[i, k] = p
    return probs


# ---------------------------------------------------------------- counts and overlap scores

def test_confusion_counts_by_hand():
    true = np.array([[1, 1, 0], [1, 0, 0]], bool)
    pred = np.array([[1, 0, 1], [1, 0, 0]], bool)
    assert [int(c) for c in confusion_counts(pred, true)] == [2, 1, 1, 2]


def test_confusion_counts_reduce_only_spatial_axes():
    pred = np.zeros((2, 3, 4, 5), bool)
    pred[1, 2, :2, :] = True  # 10 pixels in image 1, channel 2
    tp, fp, fn, tn = confusion_counts(pred, np.zeros_like(pred))
    assert fp.shape == (2, 3)
    assert fp[1, 2] == 10 and fp.sum() == 10
    assert tn[1, 2] == 10 and tn[0, 0] == 20


def test_overlap_scores_by_hand():
    assert jaccard_from_counts(3, 1, 2) == pytest.approx(3 / 6)
    assert dice_from_counts(3, 1, 2) == pytest.approx(6 / 9)
    # Truth and prediction both empty: a perfect answer, as the ISIC scorer counts it.
    assert jaccard_from_counts(0, 0, 0) == 1.0
    assert dice_from_counts(0, 0, 0) == 1.0
    # Empty truth, non-empty prediction: 0.
    assert jaccard_from_counts(0, 5, 0) == 0.0
    assert thresholded_jaccard(3, 1, 2) == 0.0           # 0.5 < 0.65
    assert thresholded_jaccard(13, 3, 4) == 0.65         # exactly at the threshold counts
    assert thresholded_jaccard(7, 1, 2) == pytest.approx(0.7)
    np.testing.assert_allclose(jaccard_from_counts([1, 0], [1, 0], [0, 0]), [0.5, 1.0])


def test_segmentation_accumulator_by_hand_over_two_batches():
    truth_a = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    pred_a = np.array([[0.9, 0.8, 0.0, 0.0], [0.7, 0.2, 0.6, 0.0], [0.0, 0.0, 0.0, 0.0]])
    empty = np.zeros((3, 4))
    acc = SegmentationAccumulator()
    acc.update(pred_a[None, None], truth_a[None, None])   # (N, 1, H, W)
    acc.update(empty[None], empty[None])                  # (N, H, W)
    # Image A: tp 3, fp 1, fn 1 -> Dice 6/8, Jaccard 3/5 (below 0.65: Task 1 gives 0).
    # Image B: both empty -> 1, 1, 1.
    assert acc.counts().tolist() == [[3, 1, 1, 7], [0, 0, 0, 12]]
    metrics = acc.compute()
    assert metrics["dice"] == pytest.approx(0.75)
    assert metrics["iou"] == pytest.approx(0.6)
    assert metrics["dice_per_image"] == pytest.approx((0.75 + 1) / 2)
    assert metrics["iou_per_image"] == pytest.approx((0.6 + 1) / 2)
    assert metrics["isic_task1_jaccard"] == pytest.approx((0.0 + 1) / 2)


def test_probability_exactly_half_is_background():
    acc = SegmentationAccumulator()
    acc.update(np.full((1, 2, 2), 0.5), np.ones((1, 2, 2)))
    assert acc.counts().tolist() == [[0, 0, 4, 0]]


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(3)
    # values bf16 stores without crossing 0.5, so both paths see the same masks
    pred = rng.choice([0.1, 0.3, 0.7, 0.9], size=(3, 1, 8, 8))
    true = rng.random((3, 1, 8, 8)) > 0.5
    from_numpy, from_torch = SegmentationAccumulator(), SegmentationAccumulator()
    from_numpy.update(pred, true)
    from_torch.update(torch.from_numpy(pred).to(torch.bfloat16), torch.from_numpy(true).float())
    np.testing.assert_array_equal(from_numpy.counts(), from_torch.counts())
    assert from_numpy.compute() == from_torch.compute()


@pytest.mark.parametrize("seed", range(5))
def test_iou_never_exceeds_dice_under_the_same_averaging(seed):
    # Guard against mixed averaging (a published table once showed IoU 0.86 beside Dice 0.72).
    rng = np.random.default_rng(seed)
    acc = SegmentationAccumulator()
    acc.update(rng.random((6, 1, 10, 12)), rng.random((6, 1, 10, 12)) > rng.random())
    m = acc.compute()
    assert m["iou"] <= m["dice"]
    assert m["iou_per_image"] <= m["dice_per_image"]
    assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]))  # J = D / (2 - D) on the sums


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside the official package, under pandas 3
@pytest.mark.parametrize("seed", range(3))
def test_segmentation_matches_official_isic_scorer(seed):
    rng = np.random.default_rng(seed)
    pairs, acc = [], SegmentationAccumulator()
    for i in range(12):
        truth = np.zeros((20, 30), np.uint8)
        if i % 4:  # every fourth truth is empty
            top, left = rng.integers(0, 10), rng.integers(0, 15)
            truth[top:top + rng.integers(4, 10), left:left + rng.integers(4, 15)] = 255
        pred = np.roll(truth, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1))
        if i % 6 == 5:
            pred[:] = 0  # empty prediction (of an empty or a real lesion)
        if i == 8:
            pred[0, 0] = 255  # a false positive on an empty-truth image
        pairs.append(SimpleNamespace(truth_image=truth, prediction_image=pred, image_id=f"ISIC_{i:07d}"))
        acc.update(pred[None] > 128, truth[None] > 128)
    official = SegmentationScore(pairs).macro_average
    ours = acc.compute()
    assert ours["isic_task1_jaccard"] == pytest.approx(official["threshold_jaccard"], abs=1e-6)
    assert ours["iou_per_image"] == pytest.approx(official["jaccard"], abs=1e-6)
    assert ours["dice_per_image"] == pytest.approx(official["dice"], abs=1e-6)


# ---------------------------------------------------------------- attributes (Task 2)

def test_attribute_accumulator_by_hand_with_different_image_sizes():
    acc = AttributeAccumulator()
    pigment, streaks = ATTRIBUTES.index("pigment_network"), ATTRIBUTES.index("streaks")
    # Image 1 (2x2 = 4 px): pigment truth 2 px, prediction 1 of them -> tp 1/4, fn 1/4.
    truth1, pred1 = np.zeros((1, 5, 2, 2)), np.zeros((1, 5, 2, 2))
    truth1[0, pigment, 0, :] = 1
    pred1[0, pigment, 0, 0] = 0.9
    # Image 2 (2x4 = 8 px): pigment truth empty, prediction 2 px -> fp 2/8;
    # streaks truth 4 px, predicted exactly -> tp 4/8.
    truth2, pred2 = np.zeros((1, 5, 2, 4)), np.zeros((1, 5, 2, 4))
    pred2[0, pigment, 1, :2] = 0.8
    truth2[0, streaks, 0, :] = 1
    pred2[0, streaks, 0, :] = 0.99
    acc.update(pred1, truth1)
    acc.update(pred2, truth2)
    m = acc.compute()
    # pigment: tp .25, fp .25, fn .25 -> Jaccard 1/3, Dice .5 / (.5 + .5)
    assert m["jaccard_pigment_network"] == pytest.approx(1 / 3)
    assert m["dice_pigment_network"] == pytest.approx(0.5)
    assert m["jaccard_streaks"] == pytest.approx(1.0)
    # Attributes empty everywhere score 1 (the ISIC convention), never NaN.
    for name in ("negative_network", "milia_like_cyst", "globules"):
        assert m[f"jaccard_{name}"] == 1.0 and m[f"dice_{name}"] == 1.0
    # micro: tp .25 + .5, fp .25, fn .25 -> Jaccard .75 / 1.25, Dice 1.5 / 2
    assert m["jaccard_micro"] == pytest.approx(0.6)
    assert m["dice_micro"] == pytest.approx(0.75)
    # each image's normalised counts sum to 1 per attribute: 2 images x 5 attributes
    assert acc.summed_counts().sum() == pytest.approx(10.0)


def test_attribute_accumulator_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(N, 5, H, W\)"):
        AttributeAccumulator().update(np.zeros((1, 4, 2, 2)), np.zeros((1, 4, 2, 2)))


# ---------------------------------------------------------------- classification (Task 3)

def test_classification_by_hand_with_a_tie():
    probs = one_hot_probs([
        {0: 0.8, 1: 0.2},          # true MEL, predicted MEL
        {0: 0.4, 1: 0.4, 2: 0.2},  # true MEL, tie between MEL and NV: wrong
        {1: 0.9, 0: 0.1},          # true NV, predicted NV
        {1: 0.3, 2: 0.7},          # true NV, predicted BCC
        {2: 0.6, 1: 0.4},          # true BCC, predicted BCC
    ])
    labels = [0, 0, 1, 1, 2]
    assert predicted_labels(probs).tolist() == [0, UNDECIDED, 1, 2, 2]
    acc = ClassificationAccumulator()
    acc.update(probs[:2], labels[:2])
    acc.update(probs[2:], labels[2:])
    m = acc.compute()
    assert m["accuracy"] == pytest.approx(3 / 5)
    # recalls MEL 1/2, NV 1/2, BCC 1/1; the four absent classes are left out
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    # precisions MEL 1/1, NV 1/1, BCC 1/2; F1 MEL 2/3, NV 2/3, BCC 2/3
    assert m["precision_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert m["f1_macro"] == pytest.approx(2 / 3)
    assert m["precision_weighted"] == pytest.approx((2 * 1 + 2 * 1 + 1 * 0.5) / 5)
    assert m["recall_weighted"] == pytest.approx(3 / 5)
    assert m["recall_MEL"] == 0.5 and m["recall_BCC"] == 1.0
    assert "recall_DF" not in m  # absent from the truth: undefined, not reported
    expected_cm = np.zeros((7, 7), int)
    expected_cm[0, 0] = expected_cm[1, 1] = expected_cm[1, 2] = expected_cm[2, 2] = 1
    np.testing.assert_array_equal(acc.confusion_matrix(), expected_cm)  # the tie is in no column
    report = acc.report()
    assert list(report.index) == list(CLASSES)
    assert report.loc["NV", "support"] == 2 and report.loc["BCC", "precision"] == 0.5


def test_auroc_by_hand_skips_classes_absent_from_truth():
    # MEL scores of the MEL images 0.9, 0.4; of the others 0.5, 0.1:
    # of the 4 (positive, negative) pairs 3 are ranked right -> 0.75.
    probs = one_hot_probs([{0: 0.9, 1: 0.1}, {0: 0.4, 1: 0.6}, {0: 0.5, 1: 0.5}, {0: 0.1, 1: 0.9}])
    labels = [0, 0, 1, 1]
    # NV scores: positives 0.5, 0.9, negatives 0.1, 0.6 -> pairs right: (.9>.1, .9>.6, .5>.1) = 3/4
    assert macro_auroc(probs, labels) == pytest.approx(0.75)
    m = ClassificationAccumulator()
    m.update(probs, labels)
    assert set(k for k in m.compute() if k.startswith("auroc_")) == {"auroc_MEL", "auroc_NV"}


def test_expected_calibration_error_by_hand():
    probs = one_hot_probs([{0: 0.9, 1: 0.1}, {0: 0.9, 1: 0.1}, {0: 0.55, 1: 0.45}, {0: 0.25, 1: 0.75}])
    labels = [0, 1, 0, 1]
    # bins (0.8667, 0.9333]: 2 images, accuracy 1/2, confidence 0.9 -> 2/4 * 0.4
    #      (0.5333, 0.6]: accuracy 1, confidence 0.55 -> 1/4 * 0.45
    #      (0.7333, 0.8]: accuracy 1, confidence 0.75 -> 1/4 * 0.25
    assert expected_calibration_error(probs, labels) == pytest.approx(0.2 + 0.1125 + 0.0625)
    assert expected_calibration_error(one_hot_probs([{0: 1.0}]), [0]) == 0.0


def random_classification(seed, n=70, n_labels=7):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_labels)
    logits = rng.normal(size=(n, 7))
    logits[np.arange(n), labels] += rng.uniform(0, 2.5)  # some signal, far from perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, labels


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_scikit_learn(seed):
    probs, labels = random_classification(seed)
    pred = probs.argmax(axis=1)
    acc = ClassificationAccumulator()
    for start in range(0, len(labels), 16):  # several batches
        acc.update(probs[start:start + 16], labels[start:start + 16])
    m = acc.compute()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred), abs=1e-6)
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average=average, zero_division=0)
        assert m[f"precision_{average}"] == pytest.approx(p, abs=1e-6)
        assert m[f"recall_{average}"] == pytest.approx(r, abs=1e-6)
        assert m[f"f1_{average}"] == pytest.approx(f, abs=1e-6)
    np.testing.assert_array_equal(acc.confusion_matrix(), skm.confusion_matrix(labels, pred, labels=range(7)))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr"), abs=1e-6)
    for k, name in enumerate(CLASSES):
        assert m[f"auroc_{name}"] == pytest.approx(skm.roc_auc_score(labels == k, probs[:, k]), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_absent_classes_match_scikit_learn_defaults(seed):
    probs, labels = random_classification(seed, n=40, n_labels=5)  # DF, VASC never true
    probs[:3, 6] = 5.0  # ...but VASC is predicted three times
    probs /= probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    acc = ClassificationAccumulator()
    acc.update(probs, labels)
    m = acc.compute()
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected_balanced = skm.balanced_accuracy_score(labels, pred)
    assert m["balanced_accuracy"] == pytest.approx(expected_balanced, abs=1e-6)
    p, r, f, _ = skm.precision_recall_fscore_support(labels, pred, average="macro", zero_division=0)
    assert (m["precision_macro"], m["recall_macro"], m["f1_macro"]) == pytest.approx((p, r, f), abs=1e-6)
    expected_auroc = np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in range(5)])
    assert m["auroc"] == pytest.approx(expected_auroc, abs=1e-6)


def test_balanced_accuracy_function_counts_ties_wrong():
    assert balanced_accuracy([0, UNDECIDED], [0, 0], n_classes=2) == 0.5


def test_empty_accumulators_say_so():
    for acc in (ClassificationAccumulator(), SegmentationAccumulator(), AttributeAccumulator()):
        with pytest.raises(DataError, match="at least one"):
            acc.compute()


# ---------------------------------------------------------------- sweep score and task wiring

def test_sweep_score_defaults_and_custom_weights():
    metrics = {"balanced_accuracy": 0.6, "dice": 0.8, "jaccard_micro": 0.3, "ece": 0.1}
    assert sweep_score(metrics, "multitask") == pytest.approx(0.7)
    assert sweep_score(metrics, "segmentation") == 0.8
    assert sweep_score(metrics, "classification") == 0.6
    assert sweep_score(metrics, "attributes") == 0.3
    assert sweep_score(metrics, "classification", {"balanced_accuracy": 1.0, "ece": -0.5}) == pytest.approx(0.55)
    with pytest.raises(ConfigError, match="'auroc'.*available: balanced_accuracy"):
        sweep_score(metrics, "classification", {"auroc": 1.0})
    with pytest.raises(ConfigError, match="unknown task 'detection'"):
        sweep_score(metrics, "detection")


@pytest.mark.parametrize("task, channels, keys", [
    ("multitask", 1, {"balanced_accuracy", "dice", "isic_task1_jaccard"}),
    ("segmentation", 1, {"dice", "iou"}),
    ("attributes", 5, {"jaccard_micro", "jaccard_globules"}),
    ("classification", 0, {"balanced_accuracy", "auroc", "ece"}),
])
def test_each_task_reports_the_metrics_config_validation_knows(task, channels, keys):
    # derm.metric_names lists, without numpy, what a sweep.metric or score weight may name;
    # the per-image predictions a training batch gives must report exactly within it.
    from derm.metric_names import TASK_METRICS
    from derm.predictions import PredictionCollector

    generator = torch.Generator().manual_seed(0)
    batch = {"mask": (torch.rand(4, channels, 8, 8, generator=generator) > 0.5).float(),
             "label": torch.tensor([0, 1, 2, -1]), "index": torch.arange(4),
             "has_mask": torch.ones(4, dtype=torch.bool)}
    probs = {"cls": torch.softmax(torch.randn(4, 7, generator=generator), dim=1)} if task in (
        "multitask", "classification") else {}
    if channels:
        probs["seg"] = torch.rand(4, channels, 8, 8, generator=generator)

    class Arrays:  # what the collector reads of the decode-once cache
        image_ids = ["a", "b", "c", "d"]

    collector = PredictionCollector(task, keep_samples=0)
    collector.add(batch, probs, Arrays())
    metrics = collector.result().metrics()
    assert keys <= set(metrics) <= set(TASK_METRICS[task])
    assert np.isfinite(sweep_score(metrics, task))
