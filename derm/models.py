"""Models by name: an SMP architecture and encoder, plus derm's classification heads.

`build_model(cfg)` returns a `DermModel` whose ``forward(x)`` gives a dict of logits:

- task ``segmentation``: ``{"seg": (B, 1, H, W)}`` (the lesion mask);
- task ``attributes``: ``{"seg": (B, 5, H, W)}``, channels in `derm.labels.ATTRIBUTES` order;
- task ``classification``: ``{"cls": (B, 7)}``, classes in `derm.labels.CLASSES` order; an
  encoder and a head only, no decoder;
- task ``multitask``: both; the head reads the segmentation encoder's features, or with
  ``model.cascade`` a second encoder reads the image times the predicted lesion probability.

With ``model.metadata`` the classification head also reads the patient's age, sex and lesion
site: ``forward(x, metadata)`` with ``metadata`` (B, `derm.data.metadata.METADATA_FEATURES`)
as `derm.data.metadata.encode_metadata` makes it (None: every value missing). A small MLP
embeds it and its output joins the pooled image features before the head's last layer.

    >>> from derm.config import config_from_dict
    >>> cfg = config_from_dict({"task": "multitask", "model": {"encoder": "resnet18",
    ...                         "encoder_weights": None}, "data": {"image_size": 64}})
    >>> out = build_model(cfg)(torch.rand(2, 3, 64, 64))
    >>> out["seg"].shape, out["cls"].shape
    (torch.Size([2, 1, 64, 64]), torch.Size([2, 7]))

Architectures, encoders and their pretrained weights all come from
segmentation-models-pytorch (and timm for ``tu-<name>`` encoders); this module only
turns their failures into one-line `ConfigError`s and adds the classification heads.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import segmentation_models_pytorch as smp
import timm
import torch
from segmentation_models_pytorch.base import ClassificationHead
from torch import nn

from derm.config import RunConfig
from derm.data.metadata import METADATA_FEATURES, missing_metadata
from derm.errors import ConfigError
from derm.labels import ATTRIBUTES, CLASSES
from derm.model_names import TIMM_PREFIX, suggest

SEGMENTATION_CHANNELS = {"segmentation": 1, "multitask": 1, "attributes": len(ATTRIBUTES)}
MULTISCALE_HIDDEN = 256
METADATA_EMBEDDING = 32


class MetadataEmbedding(nn.Module):
    """The metadata MLP (Linear-ReLU-Linear-ReLU, dropout) of a head that fuses patient metadata.

    ``forward(metadata, like)``: (B, METADATA_EMBEDDING) on ``like``'s device; ``metadata`` None
    means every value missing for the B = ``like.shape[0]`` images (`missing_metadata`).
    """

    def __init__(self, features: int, dropout: float, width: int = METADATA_EMBEDDING):
        super().__init__()
        self.features, self.width = features, width
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.ReLU(inplace=True), nn.Linear(width, width),
                                 nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, metadata: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if metadata is None:
            metadata = torch.from_numpy(missing_metadata(like.shape[0]))
        return self.mlp(metadata.to(device=like.device, dtype=self.mlp[0].weight.dtype))


class PooledHead(ClassificationHead):
    """SMP's auxiliary head (global average pool, dropout, linear) on the deepest features.

    With ``metadata_features``, the metadata embedding joins the pooled features before the linear.
    """

    def __init__(self, encoder_channels: list[int], classes: int, dropout: float, metadata_features: int = 0):
        metadata_width = METADATA_EMBEDDING if metadata_features else 0
        super().__init__(in_channels=encoder_channels[-1] + metadata_width, classes=classes, pooling="avg",
                         dropout=dropout)
        # Registered only when used: a head without metadata keeps SMP's state_dict keys.
        self.metadata_embedding = MetadataEmbedding(metadata_features, dropout) if metadata_features else None

    def forward(self, features: list[torch.Tensor], metadata: torch.Tensor | None = None) -> torch.Tensor:
        if self.metadata_embedding is None:
            return super().forward(features[-1])
        pool, flatten, dropout, linear, activation = list(self)[:5]
        pooled = dropout(flatten(pool(features[-1])))
        return activation(linear(torch.cat([pooled, self.metadata_embedding(metadata, pooled)], dim=1)))


class MultiscaleHead(nn.Module):
    """Average-pool every encoder stage, concatenate, then a two-layer MLP with dropout.

    Stage 0 (the input image itself) and the empty placeholder stages some encoders
    report (mit_b*: 0 channels) are left out. Shallow stages keep colour and texture
    cues that the deepest stage has abstracted away.
    """

    def __init__(self, encoder_channels: list[int], classes: int, dropout: float,
                 hidden: int = MULTISCALE_HIDDEN, metadata_features: int = 0):
        super().__init__()
        self.stages = [i for i, c in enumerate(encoder_channels) if i > 0 and c > 0]
        width = sum(encoder_channels[i] for i in self.stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Stages differ in scale by orders of magnitude; normalising the concatenation
        # keeps the deep stages from drowning the shallow ones at initialisation.
        self.mlp = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden + (METADATA_EMBEDDING if metadata_features else 0), classes),
        )
        self.metadata_embedding = MetadataEmbedding(metadata_features, dropout) if metadata_features else None

    def forward(self, features: list[torch.Tensor], metadata: torch.Tensor | None = None) -> torch.Tensor:
        pooled = torch.cat([self.pool(features[i]).flatten(1) for i in self.stages], dim=1)
        if self.metadata_embedding is None:
            return self.mlp(pooled)
        hidden = self.mlp[:-1](pooled)
        return self.mlp[-1](torch.cat([hidden, self.metadata_embedding(metadata, hidden)], dim=1))


HEADS = {"pooled": PooledHead, "multiscale": MultiscaleHead}


class DermModel(nn.Module):
    """Segmenter and/or classifier; ``forward(x, metadata=None)`` returns ``{"seg": ..., "cls": ...}`` logits.

    ``metadata`` (B, METADATA_FEATURES) reaches a head built with metadata (`uses_metadata`);
    other models ignore it.

    ``segmenter`` is an SMP segmentation model (None for classification). ``classifier_encoder``
    is a separate encoder for the classifier (classification, or a multitask cascade);
    when it is None the head reads the segmenter's encoder features.
    """

    def __init__(self, segmenter: nn.Module | None, classifier_encoder: nn.Module | None,
                 cls_head: nn.Module | None):
        super().__init__()
        self.segmenter = segmenter
        self.classifier_encoder = classifier_encoder
        self.cls_head = cls_head
        self.frozen_encoders = False

    @property
    def uses_metadata(self) -> bool:
        """Whether the classification head fuses patient metadata (``model.metadata``)."""
        return getattr(self.cls_head, "metadata_embedding", None) is not None

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        features = None
        if self.segmenter is not None:
            outputs["seg"], features = self._segment(x)
        if self.cls_head is not None:
            if self.classifier_encoder is not None:
                image = x
                if self.segmenter is not None:
                    # Cascade: classify the lesion, not the surrounding skin. The mask is
                    # detached so the classification loss cannot reshape the segmentation
                    # (e.g. grow masks to let in context that helps the label); the
                    # segmenter learns from the lesion masks alone and stays a segmenter.
                    image = x * torch.sigmoid(outputs["seg"]).detach()
                features = self.classifier_encoder(image)
            outputs["cls"] = self.cls_head(features, metadata)
        return outputs

    def _segment(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """SMP's own forward (encoder, decoder, head), keeping the encoder features for the classifier."""
        seg = self.segmenter
        if not torch.compiler.is_compiling():
            seg.check_input_shape(x)
        encoded = seg.encoder(x)
        if isinstance(encoded, tuple):  # DPT's ViT encoders also return prefix tokens
            features, prefix_tokens = encoded
            decoded = seg.decoder(features, prefix_tokens)
        else:
            features = encoded
            decoded = seg.decoder(features)
        return seg.segmentation_head(decoded), features

    def encoders(self) -> list[nn.Module]:
        """Every encoder in the model (the segmenter's and the classifier's)."""
        found = []
        if self.segmenter is not None:
            found.append(self.segmenter.encoder)
        if self.classifier_encoder is not None:
            found.append(self.classifier_encoder)
        return found

    def freeze_encoders(self) -> None:
        """Stop training every encoder: no gradients, and kept in eval mode by `train()`."""
        for encoder in self.encoders():
            encoder.requires_grad_(False)
        self.frozen_encoders = True
        self.train(self.training)

    def train(self, mode: bool = True) -> "DermModel":
        # A frozen encoder is a fixed feature extractor: its BatchNorm statistics must
        # not drift with the new data and its dropout must stay off, so it stays in eval.
        super().train(mode)
        if self.frozen_encoders:
            for encoder in self.encoders():
                encoder.eval()
        return self


def build_model(cfg: RunConfig, *, probe: bool = True, pretrained: bool = True) -> DermModel:
    """Build the model for ``cfg.task`` from ``cfg.model``; raise ConfigError for bad combinations.

    With ``probe`` (default), one blank image of ``data.image_size`` is passed through
    the model, so that sizes an architecture cannot take fail here, with the config's
    names, instead of at the first training step. ``pretrained=False`` ignores
    ``model.encoder_weights``: for a model whose weights come from a checkpoint, where
    fetching them first would only need a network that compute nodes often lack.
    """
    if not pretrained and cfg.model.encoder_weights is not None:
        cfg = cfg.model_copy(deep=True)
        cfg.model.encoder_weights = None
    m = cfg.model
    check_timm_encoder(m.encoder)
    check_weights_name(m.encoder, m.encoder_weights)
    seg_channels = SEGMENTATION_CHANNELS.get(cfg.task)
    segmenter = None
    if seg_channels is not None:
        segmenter = _build_or_explain(
            lambda weights: smp.create_model(m.arch, encoder_name=m.encoder, encoder_weights=weights,
                                             classes=seg_channels),
            cfg, f"model.arch {m.arch} cannot use model.encoder {m.encoder}")
    classifier_encoder = None
    if cfg.task == "classification" or (cfg.task == "multitask" and m.cascade):
        classifier_encoder = _build_or_explain(
            lambda weights: smp.encoders.get_encoder(m.encoder, in_channels=3, depth=5, weights=weights),
            cfg, f"model.encoder {m.encoder} cannot be built as a classifier")
    cls_head = None
    if cfg.task in ("classification", "multitask"):
        feature_source = classifier_encoder if classifier_encoder is not None else segmenter.encoder
        cls_head = HEADS[m.head](list(feature_source.out_channels), len(CLASSES), m.head_dropout,
                                 metadata_features=METADATA_FEATURES if m.metadata else 0)
    model = DermModel(segmenter, classifier_encoder, cls_head)
    if m.freeze_encoder:
        model.freeze_encoders()
    if probe:
        probe_input_size(model, cfg)
    return model


def check_timm_encoder(name: str) -> None:
    """ConfigError for a ``tu-`` name timm does not know, with the closest timm names."""
    if not name.startswith(TIMM_PREFIX):
        return
    timm_name = name[len(TIMM_PREFIX):]
    if not timm.is_model(timm_name):
        known = [TIMM_PREFIX + n for n in timm.list_models()]
        raise ConfigError(f"model.encoder: timm has no model {timm_name!r}{suggest(name, known)} "
                          f"(any name from timm.list_models(), written as tu-<name>)")


def check_weights_name(encoder: str, weights: str | None) -> None:
    """ConfigError when an SMP encoder has no pretrained weights of that name."""
    if weights is None or encoder.startswith(TIMM_PREFIX) or encoder not in smp.encoders.encoders:
        return
    available = list(smp.encoders.encoders[encoder]["pretrained_settings"])
    if weights not in available:
        allowed = ", ".join(available) if available else "none"
        raise ConfigError(f"model.encoder_weights: encoder {encoder} has no {weights!r} weights "
                          f"(available: {allowed}; or null to train from scratch)")


def _weights_argument(encoder: str, weights: str | None) -> str | bool | None:
    # SMP wants True for timm encoders: the pretrained variant is in the name (tu-x.tag).
    if weights is not None and encoder.startswith(TIMM_PREFIX):
        return True
    return weights


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _build_or_explain(make: Callable[[str | bool | None], nn.Module], cfg: RunConfig, what: str) -> nn.Module:
    """Call ``make(weights)``; turn SMP/timm failures into ConfigErrors naming the cause.

    When it fails with weights, building again without them tells a download failure
    (the model builds from scratch) from a combination SMP rejects (it fails again).
    """
    encoder, weights = cfg.model.encoder, cfg.model.encoder_weights
    argument = _weights_argument(encoder, weights)
    try:
        return make(argument)
    except Exception as err:  # SMP and timm raise ValueError, KeyError, AssertionError, ...
        failure = err
    if argument is not None:
        try:
            make(None)
        except Exception as err:
            failure = err
        else:
            raise ConfigError(
                f"could not download {weights} weights for encoder {encoder} ({_first_line(failure)}); "
                f"set model.encoder_weights: null to train from scratch, or pre-fetch them") from failure
    raise ConfigError(f"{what} (segmentation-models-pytorch says: {_first_line(failure)})") from failure


def probe_input_size(model: nn.Module, cfg: RunConfig) -> None:
    """Run one blank image of ``data.image_size`` through ``model``; ConfigError if it cannot."""
    size = cfg.data.image_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except Exception as err:
        raise ConfigError(f"model.arch {cfg.model.arch} with model.encoder {cfg.model.encoder} cannot take "
                          f"data.image_size {size} images ({_first_line(err)})") from err
    finally:
        model.train(was_training)


def param_groups(model: DermModel, lr: float, encoder_lr_mult: float) -> list[dict]:
    """Optimiser parameter groups: decoder and heads at ``lr``, encoders at ``lr * encoder_lr_mult``.

    Only trainable parameters are included; a group with none (frozen encoders) is left
    out. Each group carries a ``name`` ("decoder_and_heads" or "encoder").
    """
    encoder_ids = {id(p) for encoder in model.encoders() for p in encoder.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"name": "decoder_and_heads", "params": [p for p in trainable if id(p) not in encoder_ids], "lr": lr},
        {"name": "encoder", "params": [p for p in trainable if id(p) in encoder_ids], "lr": lr * encoder_lr_mult},
    ]
    return [g for g in groups if g["params"]]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once); only trainable ones with ``trainable_only``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# Family prefixes of SMP and timm encoder names, longest match first, with their
# usual spelling and the separator before the variant ("ResNet-34", "MobileNetV2").
ENCODER_FAMILIES = (
    ("inceptionresnetv2", "Inception-ResNet-v2", "-"), ("inceptionv4", "Inception-v4", "-"),
    ("tf_efficientnet_lite", "EfficientNet-Lite", ""), ("efficientnetv2", "EfficientNetV2", "-"),
    ("efficientnet", "EfficientNet", "-"), ("mobilenet_v2", "MobileNetV2", "-"),
    ("mobilenetv2", "MobileNetV2", "-"), ("mobilenetv3", "MobileNetV3", "-"),
    ("mobilenetv4", "MobileNetV4", "-"), ("mobileone", "MobileOne", "-"),
    ("se_resnext", "SE-ResNeXt", "-"), ("se_resnet", "SE-ResNet", "-"), ("senet", "SENet", "-"),
    ("skresnext", "SK-ResNeXt", "-"), ("skresnet", "SK-ResNet", "-"),
    ("resnext", "ResNeXt", "-"), ("resnet", "ResNet", "-"), ("regnet", "RegNet", "-"),
    ("densenet", "DenseNet", "-"), ("convnextv2", "ConvNeXtV2", "-"), ("convnext", "ConvNeXt", "-"),
    ("xception", "Xception", "-"), ("dpn", "DPN", "-"), ("vgg", "VGG", "-"), ("mit", "MiT", "-"),
    ("swin", "Swin", "-"), ("vit", "ViT", "-"), ("deit", "DeiT", "-"), ("maxvit", "MaxViT", "-"),
)


def _variant_token(token: str) -> str:
    if token.isalpha():
        return token.upper() if len(token) <= 2 else token.capitalize()
    if re.fullmatch(r"[a-z]\d+", token):  # b0, s4
        return token.upper()
    return token


def encoder_label(name: str) -> str:
    """A readable encoder name: resnet34 -> ResNet-34, mit_b0 -> MiT-B0, tu-convnext_tiny -> ConvNeXt-Tiny."""
    base = name.removeprefix(TIMM_PREFIX).removeprefix("timm-").split(".")[0]
    base = base.removeprefix("tf_") if not base.startswith("tf_efficientnet_lite") else base
    for prefix, pretty, separator in ENCODER_FAMILIES:
        if base.startswith(prefix):
            rest = [t for t in re.split(r"[-_]", base[len(prefix):]) if t]
            return pretty + (separator + "-".join(_variant_token(t) for t in rest) if rest else "")
    return base


def model_label(cfg: RunConfig) -> str:
    """The leaderboard's Model/Backbone: "Unet/ResNet-34", "ResNet-34 (encoder only)", "... (cascade)"."""
    encoder = encoder_label(cfg.model.encoder)
    if cfg.task == "classification":
        return f"{encoder} (encoder only)"
    label = f"{cfg.model.arch}/{encoder}"
    return label + " (cascade)" if cfg.task == "multitask" and cfg.model.cascade else label


__all__ = [
    "DermModel", "MetadataEmbedding", "MultiscaleHead", "PooledHead", "build_model", "check_timm_encoder",
    "check_weights_name", "count_parameters", "encoder_label", "model_label",
    "param_groups", "probe_input_size",
]
