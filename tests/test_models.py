"""derm.models: every task's outputs, heads, cascade, freezing, parameter groups, errors.

Tiny on purpose: 64 px inputs, small encoders, ``encoder_weights: null`` (never a download).
"""

import warnings

import pytest
import segmentation_models_pytorch as smp
import torch

from derm.config import config_from_dict
from derm.errors import ConfigError
from derm.labels import ATTRIBUTES, CLASSES
from derm.model_names import ARCHITECTURES
from derm.models import (
    MultiscaleHead,
    PooledHead,
    build_model,
    count_parameters,
    encoder_label,
    model_label,
    param_groups,
)

TINY = "tu-mobilenetv3_small_050"  # builds in ~0.1 s without weights


def make_cfg(task="multitask", arch="Unet", encoder=TINY, size=64, **model):
    model = {"arch": arch, "encoder": encoder, "encoder_weights": None, **model}
    return config_from_dict({"task": task, "data": {"image_size": size}, "model": model})


def build(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SMP's deprecation notes about timm- encoders
        return build_model(make_cfg(*args, **kwargs))


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.mark.parametrize("arch,encoder", [
    ("Unet", "resnet18"), ("FPN", "mobilenet_v2"), ("DeepLabV3Plus", "efficientnet-b0"),
    ("Segformer", "mit_b0"), ("UnetPlusPlus", "tu-resnet10t"),
])
def test_multitask_outputs_for_several_architectures(arch, encoder):
    model = build("multitask", arch, encoder).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert set(out) == {"seg", "cls"}
    assert out["seg"].shape == (2, 1, 64, 64)
    assert out["cls"].shape == (2, len(CLASSES))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_predicts_at_input_size(arch):
    size = 128 if arch == "PAN" else 64  # PAN needs 128 px (config rule)
    model = build("segmentation", arch, size=size).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size))
    assert set(out) == {"seg"} and out["seg"].shape == (1, 1, size, size)


@pytest.mark.parametrize("task,expected", [
    ("segmentation", {"seg": (2, 1, 64, 64)}),
    ("attributes", {"seg": (2, len(ATTRIBUTES), 64, 64)}),
    ("classification", {"cls": (2, len(CLASSES))}),
    ("multitask", {"seg": (2, 1, 64, 64), "cls": (2, len(CLASSES))}),
])
def test_output_keys_and_shapes_per_task(task, expected):
    model = build(task).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


def test_classification_builds_no_decoder():
    model = build("classification", "Unet", "resnet18")
    assert model.segmenter is None
    assert not any("decoder" in name for name, _ in model.named_modules())
    encoder = smp.encoders.get_encoder("resnet18", weights=None)
    head = 512 * len(CLASSES) + len(CLASSES)  # pooled head: one linear layer on 512 channels
    assert count_parameters(model) == count_parameters(encoder) + head
    assert isinstance(model.cls_head, PooledHead)


def test_multiscale_head_pools_every_encoder_stage():
    model = build("classification", encoder="mit_b0", head="multiscale")
    assert isinstance(model.cls_head, MultiscaleHead)
    channels = model.classifier_encoder.out_channels  # [3, 0, 32, 64, 160, 256]
    first_linear = next(m for m in model.cls_head.modules() if isinstance(m, torch.nn.Linear))
    assert first_linear.in_features == sum(channels[1:]) == 512
    # A shallow stage really feeds the logits: its features get a gradient from them.
    features = [f.detach().requires_grad_(True) for f in model.classifier_encoder(torch.rand(2, 3, 64, 64))]
    model.cls_head(features).sum().backward()
    assert features[2].grad is not None and features[2].grad.abs().sum() > 0
    assert features[0].grad is None  # the input image itself is not a stage


def test_cascade_classifier_sees_image_times_detached_lesion_probability():
    model = build("multitask", cascade=True).eval()
    seen = {}
    model.classifier_encoder.register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0]))
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out["seg"].shape == (2, 1, 64, 64) and out["cls"].shape == (2, 7)
    expected = x * torch.sigmoid(out["seg"])
    torch.testing.assert_close(seen["input"], expected)
    assert not torch.equal(seen["input"], x)
    # The classifier's loss does not reach the segmenter (the mask is detached) ...
    out["cls"].sum().backward()
    assert all(p.grad is None for p in model.segmenter.parameters())
    assert any(p.grad is not None for p in model.classifier_encoder.parameters())
    # ... and the cascade's classifier has its own encoder.
    assert model.classifier_encoder is not model.segmenter.encoder


def test_freeze_encoder_freezes_exactly_the_encoder():
    model = build("multitask", "Unet", "resnet18", freeze_encoder=True)
    encoder_params = {id(p) for p in model.segmenter.encoder.parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) not in encoder_params), name
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - count_parameters(
        model.segmenter.encoder)
    # train() keeps the frozen encoder in eval: its BatchNorm statistics do not move.
    model.train()
    assert model.segmenter.decoder.training and not model.segmenter.encoder.training
    bn = next(m for m in model.segmenter.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model(torch.rand(2, 3, 64, 64) * 5)
    torch.testing.assert_close(bn.running_mean, before)


def test_param_groups_put_encoders_at_a_multiple_of_the_lr():
    model = build("multitask", cascade=True)
    groups = param_groups(model, lr=1e-3, encoder_lr_mult=0.1)
    by_name = {g["name"]: g for g in groups}
    assert by_name["decoder_and_heads"]["lr"] == 1e-3
    assert by_name["encoder"]["lr"] == pytest.approx(1e-4)
    encoder_ids = {id(p) for e in (model.segmenter.encoder, model.classifier_encoder) for p in e.parameters()}
    assert {id(p) for p in by_name["encoder"]["params"]} == encoder_ids
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())  # each exactly once


def test_param_groups_leave_out_frozen_parameters():
    model = build("classification", freeze_encoder=True)
    groups = param_groups(model, lr=1e-3, encoder_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["decoder_and_heads"]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.cls_head.parameters()}


def test_unknown_timm_encoder_suggests_close_names():
    with pytest.raises(ConfigError, match=r"timm has no model 'convnext_tinyy'.*did you mean tu-convnext_tiny"):
        build(encoder="tu-convnext_tinyy")


@pytest.mark.parametrize("arch,encoder,smp_says", [
    ("UnetPlusPlus", "mit_b0", "not support"),
    ("DPT", "resnet18", "Only Timm encoders"),
])
def test_combination_smp_rejects_names_both(arch, encoder, smp_says):
    with pytest.raises(ConfigError) as err:
        build("segmentation", arch, encoder)
    message = str(err.value)
    assert f"model.arch {arch}" in message and f"model.encoder {encoder}" in message
    assert smp_says in message and "\n" not in message


def test_size_the_architecture_cannot_take_fails_at_build():
    with pytest.raises(ConfigError, match=r"DPT with model.encoder tu-vit_tiny_patch16_224 cannot take "
                                          r"data.image_size 64"):
        build("segmentation", "DPT", "tu-vit_tiny_patch16_224")


def test_weights_download_failure_says_how_to_train_from_scratch(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    cfg = make_cfg("segmentation", encoder="resnet18", encoder_weights="imagenet")
    with pytest.raises(ConfigError) as err:
        build_model(cfg)
    assert str(err.value) == (
        "could not download imagenet weights for encoder resnet18 (OSError: Network is unreachable); "
        "set model.encoder_weights: null to train from scratch, or pre-fetch them")


def test_timm_weights_download_failure(monkeypatch):
    import timm.models._builder

    def offline(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    cfg = make_cfg("classification", encoder=TINY, encoder_weights="imagenet")
    with pytest.raises(ConfigError, match=rf"could not download imagenet weights for encoder {TINY} "
                                          r"\(ConnectionError: no route"):
        build_model(cfg)


def test_unknown_weights_name_lists_available():
    with pytest.raises(ConfigError, match=r"encoder resnet18 has no 'instagram' weights \(available: imagenet"):
        build(encoder="resnet18", encoder_weights="instagram")


@pytest.mark.parametrize("task,arch,encoder,cascade,label", [
    ("segmentation", "Unet", "resnet34", False, "Unet/ResNet-34"),
    ("multitask", "FPN", "efficientnet-b0", False, "FPN/EfficientNet-B0"),
    ("attributes", "Segformer", "mit_b0", False, "Segformer/MiT-B0"),
    ("segmentation", "Unet", "tu-convnext_tiny", False, "Unet/ConvNeXt-Tiny"),
    ("multitask", "Unet", "mobilenet_v2", True, "Unet/MobileNetV2 (cascade)"),
    ("classification", "Unet", "resnet34", False, "ResNet-34 (encoder only)"),
])
def test_model_label(task, arch, encoder, cascade, label):
    cfg = config_from_dict({"task": task, "model": {"arch": arch, "encoder": encoder, "cascade": cascade}})
    assert model_label(cfg) == label


@pytest.mark.parametrize("name,label", [
    ("resnext50_32x4d", "ResNeXt-50-32x4d"), ("timm-efficientnet-b3", "EfficientNet-B3"),
    ("tu-tf_efficientnetv2_s", "EfficientNetV2-S"), ("tu-resnet18.a1_in1k", "ResNet-18"),
    ("timm-tf_efficientnet_lite0", "EfficientNet-Lite0"), ("tu-somethingnew_x", "somethingnew_x"),
])
def test_encoder_label(name, label):
    assert encoder_label(name) == label


def test_count_parameters_counts_every_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))  # 16 + 10
    assert count_parameters(model) == 26
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 10
