"""derm.losses: segmentation terms, class and attribute weighting, focal, multitask weighting."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from derm.config import SEG_LOSSES, config_from_dict
from derm.errors import ConfigError
from derm.labels import ATTRIBUTES, CLASSES
from derm.losses import (
    ClassificationLoss,
    SegmentationLoss,
    attribute_pos_weights,
    build_loss,
    inverse_frequency_weights,
)


def make_cfg(task, **loss):
    return config_from_dict({"task": task, "loss": loss})


def lesion_target(batch=2, size=16):
    target = torch.zeros(batch, 1, size, size)
    target[:, :, 4:12, 3:10] = 1.0
    return target


def attribute_target(batch=2, size=16):
    target = torch.zeros(batch, len(ATTRIBUTES), size, size)
    target[:, 0, 2:9, 2:9] = 1.0   # pigment network
    target[0, 4, 10:14, 1:5] = 1.0  # globules in one image; the other channels stay empty
    return target


@pytest.mark.parametrize("mode,target", [("binary", lesion_target()), ("multilabel", attribute_target())])
@pytest.mark.parametrize("name", SEG_LOSSES)
def test_segmentation_term_is_positive_and_falls_as_predictions_approach_targets(name, mode, target):
    loss = SegmentationLoss({name: 1.0}, mode, make_cfg("segmentation").loss)
    sign = 2 * target - 1
    values = []
    for logits in (-2 * sign, torch.zeros_like(target), 2 * sign):  # wrong, unsure, right
        total, parts = loss(logits, target)
        assert torch.isfinite(total) and set(parts) == {name}
        values.append(total.item())
    wrong, unsure, right = values
    assert wrong > unsure > right >= 0
    assert unsure > 0


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_all_empty_attribute_masks_give_finite_loss_and_gradients(name):
    loss = SegmentationLoss({name: 1.0}, "multilabel", make_cfg("attributes").loss)
    logits = torch.randn(2, len(ATTRIBUTES), 16, 16, requires_grad=True)
    total, _ = loss(logits, torch.zeros(2, len(ATTRIBUTES), 16, 16))
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(logits.grad).all()


def test_segmentation_parts_and_weighted_sum():
    loss_fn = build_loss(make_cfg("segmentation", seg={"dice": 2.0, "bce": 0.5}))
    target = lesion_target()
    logits = torch.randn_like(target)
    total, parts = loss_fn({"seg": logits}, {"mask": target, "label": torch.tensor([-1, -1])})
    assert set(parts) == {"loss_seg", "loss_seg_dice", "loss_seg_bce"}
    assert all(isinstance(v, float) for v in parts.values())
    assert parts["loss_seg"] == pytest.approx(2.0 * parts["loss_seg_dice"] + 0.5 * parts["loss_seg_bce"], rel=1e-6)
    assert total.item() == pytest.approx(parts["loss_seg"], rel=1e-6)
    assert parts["loss_seg_bce"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, target)), rel=1e-6)


def test_images_without_masks_are_left_out_of_the_segmentation_loss():
    loss_fn = build_loss(make_cfg("segmentation", seg="bce"))
    target = lesion_target()
    logits = torch.randn_like(target)
    batch = {"mask": target, "label": torch.tensor([-1, -1]), "has_mask": torch.tensor([True, False])}
    _, parts = loss_fn({"seg": logits}, batch)
    assert parts["loss_seg"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits[:1], target[:1])))
    batch["has_mask"] = torch.tensor([False, False])
    total, parts = loss_fn({"seg": logits.requires_grad_(True)}, batch)
    total.backward()
    assert parts["loss_seg"] == 0.0


def test_mask_channels_must_match_the_output():
    loss_fn = build_loss(make_cfg("attributes"))
    with pytest.raises(ValueError, match="batch mask has shape"):
        loss_fn({"seg": torch.zeros(2, 5, 8, 8)}, {"mask": torch.zeros(2, 1, 8, 8), "label": torch.tensor([-1, -1])})


def test_auto_attribute_pos_weights_are_negatives_over_positives_clipped():
    fraction = np.array([0.5, 0.2, 0.01, 0.0, 1e-5])
    np.testing.assert_allclose(attribute_pos_weights("auto", fraction), [1.0, 4.0, 99.0, 100.0, 100.0])
    assert attribute_pos_weights("none", fraction) is None
    np.testing.assert_allclose(attribute_pos_weights([1, 2, 3, 4, 5], None), [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="attribute_positive_fraction"):
        attribute_pos_weights("auto", None)


def test_attribute_pos_weight_applies_per_channel():
    # 5 x 5 images: a pos_weight of shape (5,) would silently broadcast over the width.
    weights = [3.0, 1.0, 1.0, 1.0, 0.5]
    loss_fn = build_loss(make_cfg("attributes", seg="bce", attribute_pos_weight=weights))
    target = (torch.rand(2, 5, 5, 5) > 0.5).float()
    logits = torch.randn(2, 5, 5, 5)
    _, parts = loss_fn({"seg": logits}, {"mask": target, "label": torch.tensor([-1, -1])})
    w = torch.tensor(weights).view(1, 5, 1, 1)
    by_hand = -(w * target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits)).mean()
    assert parts["loss_seg_bce"] == pytest.approx(by_hand.item(), rel=1e-5)


def test_inverse_frequency_class_weights_by_hand():
    counts = np.array([10, 60, 20, 10, 0, 0, 0])  # 100 images, 4 classes present
    weights = inverse_frequency_weights(counts)
    np.testing.assert_allclose(weights[:4], [2.5, 100 / 240, 1.25, 2.5])
    np.testing.assert_allclose(weights[4:], 2.5)  # absent classes: the largest present weight
    assert (counts * weights).sum() == pytest.approx(counts.sum())  # a sample weighs 1 on average
    loss_fn = build_loss(make_cfg("classification", class_weights="inverse_frequency"), class_counts=counts)
    np.testing.assert_allclose(loss_fn.cls.class_weights.numpy(), weights, rtol=1e-6)
    with pytest.raises(ValueError, match="class_counts"):
        build_loss(make_cfg("classification", class_weights="inverse_frequency"))


def test_weighted_cross_entropy_counts_rare_classes_more():
    logits = torch.zeros(2, len(CLASSES))
    logits[0, 0] = 2.0  # confident and right about MEL, unsure about NV
    labels = torch.tensor([0, 1])
    weights = np.array([1.0, 3.0, 1, 1, 1, 1, 1])
    plain = ClassificationLoss("ce")(logits, labels)
    weighted = ClassificationLoss("ce", class_weights=weights)(logits, labels)
    ce = F.cross_entropy(logits, labels, reduction="none")
    assert weighted.item() == pytest.approx(float((ce[0] + 3 * ce[1]) / 4))
    assert weighted.item() > plain.item()


def test_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.5, 0, 0, 0, 0, -1.0]])
    eps = 0.1
    logp = logits.log_softmax(1)
    by_hand = -(1 - eps) * logp[0, 0] - eps * logp[0].mean()
    loss = ClassificationLoss("ce", label_smoothing=eps)(logits, torch.tensor([0]))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_focal_by_hand_and_equal_to_ce_at_gamma_zero():
    logits = torch.zeros(1, len(CLASSES))
    logits[0, 1] = math.log(6.0)  # p(NV) = 6 / (6 + 6) = 0.5
    focal = ClassificationLoss("focal", gamma=2.0)(logits, torch.tensor([1]))
    assert focal.item() == pytest.approx(0.25 * math.log(2.0))
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 7), torch.tensor([0, 1, 2, 3, 4, 6])
    weights = np.linspace(0.5, 2.0, 7)
    ce = ClassificationLoss("ce", label_smoothing=0.1, class_weights=weights)(logits, labels)
    gamma0 = ClassificationLoss("focal", gamma=0.0, label_smoothing=0.1, class_weights=weights)(logits, labels)
    assert gamma0.item() == pytest.approx(ce.item(), rel=1e-6)


def test_focal_down_weights_easy_samples():
    logits = torch.tensor([[4.0, 0, 0, 0, 0, 0, 0], [0.5, 0, 0, 0, 0, 0, 0]])
    labels = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, labels, reduction="none")
    focal = ClassificationLoss("focal", gamma=2.0)
    easy, hard = float(focal(logits[:1], labels[:1])), float(focal(logits[1:], labels[1:]))
    assert easy / float(ce[0]) < hard / float(ce[1]) < 1.0


def test_unlabelled_samples_are_ignored():
    loss = ClassificationLoss("ce")
    logits = torch.randn(3, 7, requires_grad=True)
    mixed = loss(logits, torch.tensor([2, -1, 5]))
    expected = F.cross_entropy(logits[[0, 2]], torch.tensor([2, 5]))
    assert mixed.item() == pytest.approx(expected.item())
    none = loss(logits, torch.tensor([-1, -1, -1]))
    none.backward()
    assert none.item() == 0.0 and torch.isfinite(logits.grad).all()


def multitask_inputs():
    torch.manual_seed(1)
    target = lesion_target()
    outputs = {"seg": torch.randn_like(target, requires_grad=True), "cls": torch.randn(2, 7, requires_grad=True)}
    return outputs, {"mask": target, "label": torch.tensor([1, 4])}


def test_fixed_multitask_weighting():
    outputs, batch = multitask_inputs()
    loss_fn = build_loss(make_cfg("multitask", seg_weight=2.0, cls_weight=0.25))
    total, parts = loss_fn(outputs, batch)
    assert "loss" not in parts  # the loop logs the total itself
    assert total.item() == pytest.approx(2.0 * parts["loss_seg"] + 0.25 * parts["loss_cls"], rel=1e-6)
    assert list(loss_fn.parameters()) == []


def test_uncertainty_weighting_learns_log_variances():
    outputs, batch = multitask_inputs()
    loss_fn = build_loss(make_cfg("multitask", task_weighting="uncertainty"))
    params = list(loss_fn.parameters())
    assert len(params) == 1 and params[0].shape == (2,)
    with torch.no_grad():
        loss_fn.log_vars.copy_(torch.tensor([math.log(2.0), 0.0]))
    total, parts = loss_fn(outputs, batch)
    by_hand = parts["loss_seg"] / 2 + math.log(2.0) + parts["loss_cls"]
    assert total.item() == pytest.approx(by_hand, rel=1e-5)
    assert parts["task_weight_seg"] == pytest.approx(0.5)
    total.backward()
    assert loss_fn.log_vars.grad is not None and (loss_fn.log_vars.grad != 0).all()
    assert outputs["seg"].grad is not None and outputs["cls"].grad is not None
    # At its optimum exp(-s) * L + s has s = log L: gradient steps move s towards it.
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        loss_fn({k: v.detach() for k, v in outputs.items()}, batch)[0].backward()
        optimizer.step()
    np.testing.assert_allclose(loss_fn.log_vars.detach().numpy(),
                               np.log([parts["loss_seg"], parts["loss_cls"]]), atol=0.02)


def test_half_precision_outputs_are_scored_in_float32():
    outputs, batch = multitask_inputs()
    loss_fn = build_loss(make_cfg("multitask"))
    full, _ = loss_fn(outputs, batch)
    half, _ = loss_fn({k: v.bfloat16() for k, v in outputs.items()}, batch)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=2e-2)


def test_tversky_needs_some_weight():
    with pytest.raises(ConfigError, match="tversky_alpha"):  # at load, before a loss is built
        make_cfg("segmentation", seg="tversky", tversky_alpha=0.0, tversky_beta=0.0)


def test_every_segmentation_loss_the_config_allows_is_one_registry_entry():
    from derm.config import SEG_LOSSES
    from derm.losses import SEGMENTATION_LOSSES

    assert set(SEGMENTATION_LOSSES) == set(SEG_LOSSES)
