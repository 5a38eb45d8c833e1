"""Names of the architectures and encoders derm can build, known without importing torch.

Config validation runs before any heavy import, so that a typo fails in well under a
second. These tuples mirror segmentation-models-pytorch's registries (a test checks they
still match the installed version); timm encoders (``tu-<timm name>``) are checked
against timm's own list when the model is built.
"""

import difflib

from derm.errors import ConfigError

# segmentation_models_pytorch.MODEL_ARCHITECTURES_MAPPING, in its spelling.
ARCHITECTURES = (
    "Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
    "Linknet", "MAnet", "PAN", "UPerNet", "Segformer", "DPT",
)

# segmentation_models_pytorch.encoders.get_encoder_names() for SMP 0.6.
SMP_ENCODERS = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_32x16d",
    "resnext101_32x32d", "resnext101_32x48d",
    "dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131",
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "senet154", "se_resnet50", "se_resnet101", "se_resnet152", "se_resnext50_32x4d",
    "se_resnext101_32x4d",
    "densenet121", "densenet169", "densenet201", "densenet161",
    "inceptionresnetv2", "inceptionv4",
    "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3",
    "efficientnet-b4", "efficientnet-b5", "efficientnet-b6", "efficientnet-b7",
    "mobilenet_v2", "xception",
    "timm-efficientnet-b0", "timm-efficientnet-b1", "timm-efficientnet-b2",
    "timm-efficientnet-b3", "timm-efficientnet-b4", "timm-efficientnet-b5",
    "timm-efficientnet-b6", "timm-efficientnet-b7", "timm-efficientnet-b8",
    "timm-efficientnet-l2",
    "timm-tf_efficientnet_lite0", "timm-tf_efficientnet_lite1", "timm-tf_efficientnet_lite2",
    "timm-tf_efficientnet_lite3", "timm-tf_efficientnet_lite4",
    "timm-skresnet18", "timm-skresnet34", "timm-skresnext50_32x4d",
    "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5",
    "mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4",
)

TIMM_PREFIX = "tu-"


def suggest(name: str, known, n: int = 3) -> str:
    """'; did you mean a, b?' for the closest known names, or '' when none is close."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    return f"; did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""


def check_architecture(name: str) -> str:
    """Return the canonical spelling of an SMP architecture, or raise ConfigError."""
    for arch in ARCHITECTURES:
        if arch.lower() == name.lower():
            return arch
    raise ConfigError(
        f"unknown architecture {name!r}{suggest(name, ARCHITECTURES)} "
        f"(allowed: {', '.join(ARCHITECTURES)})"
    )


def check_encoder(name: str) -> str:
    """Accept an SMP encoder name or any ``tu-<timm model>``; raise ConfigError otherwise."""
    if name in SMP_ENCODERS or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)):
        return name
    raise ConfigError(
        f"unknown encoder {name!r}{suggest(name, SMP_ENCODERS)} "
        f"(allowed: the segmentation-models-pytorch encoders such as resnet34, "
        f"efficientnet-b0, mobilenet_v2, mit_b0, or any timm model as tu-<name>)"
    )
