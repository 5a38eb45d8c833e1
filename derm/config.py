"""Typed run configuration: sections, YAML loading, dotted overrides, one-line errors.

A run is described by one YAML file with the sections ``data``, ``model``, ``loss``,
``optim`` and ``train`` (plus ``name``, ``task``, ``out_dir`` and ``mlflow``). Every
key is validated when the file is loaded, before any data is read or Ray starts; after
that the rest of derm trusts the config and never re-checks it.

    >>> cfg = config_from_dict({"task": "segmentation", "train": {"epochs": 2}})
    >>> cfg.train.epochs, cfg.model.arch
    (2, 'Unet')

A mistake is one line naming the file, the key and what is allowed::

    runs/a.yaml: optim.name: got 'adamm'; allowed: 'adam', 'adamw', 'sgd' or 'rmsprop'
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from derm.errors import ConfigError
from derm.metric_names import check_metric_name
from derm.model_names import check_architecture, check_encoder, suggest

Task = Literal["multitask", "attributes", "segmentation", "classification"]
Layout = Literal["auto", "ham10000", "ham10000-kaggle", "isic2018-task1-3", "isic2018-task2"]
SEG_LOSSES = ("dice", "jaccard", "bce", "focal", "tversky", "lovasz")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# Below these sizes an architecture's decoder runs out of spatial resolution
# (PAN raises "Output size is too small" at 64 px with a 5-stage encoder).
MIN_IMAGE_SIZE = {"PAN": 128}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    root: str = "data/HAM10000"
    layout: Layout = "auto"
    image_size: int = Field(256, ge=32, le=2048, description="square training resolution, a multiple of 32")
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0)
    split_seed: int = 0
    split_csv: str | None = Field(None, description="reuse this split (image_id,split) instead of making one")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0, description="stop when more files than this are bad")
    cache_dir: str | None = Field(None, description="decode-once cache; default $DERM_CACHE_DIR or ~/.cache/derm")
    augment: Literal["none", "light", "default", "strong"] = "default"
    balanced_sampling: bool = False
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers; default from the run's CPUs")
    resize: Literal["squash", "pad", "center_crop"] = Field(
        "squash", description="to the square input: stretch, keep the aspect ratio on black, or crop the centre")
    color_constancy: Literal["none", "shades_of_gray"] = Field(
        "none", description="Shades of Gray (Finlayson & Trezzi 2004), as the ISIC 2018/2019 winners")
    color_constancy_p: float = Field(6.0, ge=1.0, allow_inf_nan=False,
                                     description="Shades of Gray Minkowski norm (1 = grey world)")

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32 (encoders downsample 5 times), e.g. {max(32, v // 32 * 32)}")
        return v

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave a training split (sum < 1)")
        return self


class ModelConfig(Section):
    arch: str = "Unet"
    encoder: str = "resnet34"
    encoder_weights: str | None = Field("imagenet", description="null trains from scratch (no download)")
    head: Literal["pooled", "multiscale"] = "pooled"
    head_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    cascade: bool = Field(False, description="classify the image times the predicted lesion probability")
    freeze_encoder: bool = False
    encoder_lr_mult: float = Field(1.0, gt=0.0, le=100.0)
    metadata: bool = Field(False, description="fuse age, sex and lesion site (a small MLP) into the classification "
                                              "head; missing values are encoded, not dropped")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        try:
            return check_architecture(v)
        except ConfigError as err:  # as ValueError, so the message gets its key
            raise ValueError(str(err)) from None

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        try:
            return check_encoder(v)
        except ConfigError as err:
            raise ValueError(str(err)) from None


class LossConfig(Section):
    seg: dict[str, float] = Field(default_factory=lambda: {"dice": 1.0, "bce": 1.0},
                                  description="weighted sum of segmentation losses, or 'dice+bce'")
    cls: Literal["ce", "focal"] = "ce"
    focal_gamma: float = Field(2.0, ge=0.0, le=10.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["none", "inverse_frequency"] = "none"
    attribute_pos_weight: Literal["none", "auto"] | list[float] = Field(
        "none", description="BCE positive weights per attribute; auto = negatives/positives in train")
    tversky_alpha: float = Field(0.5, ge=0.0, le=1.0)
    tversky_beta: float = Field(0.5, ge=0.0, le=1.0)
    task_weighting: Literal["fixed", "uncertainty"] = "fixed"
    seg_weight: float = Field(1.0, ge=0.0)
    cls_weight: float = Field(1.0, ge=0.0)

    @field_validator("seg", mode="before")
    @classmethod
    def _parse_seg(cls, v: Any) -> Any:
        if isinstance(v, str):  # "dice+bce" means equal weights
            return {term.strip(): 1.0 for term in v.split("+") if term.strip()}
        return v

    @field_validator("seg")
    @classmethod
    def _known_seg_terms(cls, v: dict[str, float]) -> dict[str, float]:
        for name, weight in v.items():
            if name not in SEG_LOSSES:
                raise ValueError(f"unknown segmentation loss {name!r}{suggest(name, SEG_LOSSES)} "
                                 f"(allowed: {', '.join(SEG_LOSSES)})")
            if weight < 0:
                raise ValueError(f"weight of {name!r} must be >= 0, got {weight}")
        if not any(w > 0 for w in v.values()):
            raise ValueError(f"needs at least one loss with a positive weight (allowed: {', '.join(SEG_LOSSES)})")
        return v

    @model_validator(mode="after")
    def _tversky_is_a_loss(self) -> "LossConfig":
        if self.tversky_alpha + self.tversky_beta == 0:
            raise ValueError("loss.tversky_alpha + loss.tversky_beta must be > 0 (0.5 and 0.5 is Dice)")
        return self

    @field_validator("attribute_pos_weight")
    @classmethod
    def _five_weights(cls, v: Any) -> Any:
        if isinstance(v, list) and (len(v) != 5 or any(w <= 0 for w in v)):
            raise ValueError("must be 'none', 'auto' or a list of 5 positive weights, one per attribute")
        return v


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(1e-4, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd and rmsprop")
    nesterov: bool = False
    scheduler: Literal["none", "cosine", "cosine_restarts", "onecycle", "step", "exponential", "plateau"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0.0)
    step_size: int = Field(10, ge=1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step/exponential/plateau decay factor")
    restart_epochs: int = Field(10, ge=1, description="cosine_restarts: epochs of the first cycle")
    plateau_patience: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimConfig":
        if self.nesterov and self.name == "sgd" and self.momentum == 0:
            raise ValueError("optim.nesterov needs optim.momentum > 0 (e.g. 0.9)")
        return self


class TrainConfig(Section):
    epochs: int = Field(30, ge=1, le=10000)
    batch_size: int = Field(16, ge=1, le=4096)
    amp: Literal["auto", "bf16", "fp16", "off"] = Field("auto", description="auto: bf16 on CUDA when supported, off on CPU")
    channels_last: bool = False
    grad_clip: float | None = Field(None, gt=0.0)
    grad_accum_steps: int = Field(1, ge=1)
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    score_weights: dict[str, float] | None = Field(
        None, description="custom score: metric name -> weight; default depends on the task")
    checkpoint_every: int = Field(1, ge=1, description="epochs between 'latest' checkpoints")

    @field_validator("score_weights")
    @classmethod
    def _weights_non_empty(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and not v:
            raise ValueError("must name at least one metric, or be null for the task's default score")
        return v


class MlflowConfig(Section):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="default: sqlite database beside the run's outputs")
    experiment: str | None = None


class RunConfig(Section):
    name: str = "run"
    task: Task = "multitask"
    out_dir: str = "runs"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # Names become folder names: they must never escape the output folder.
        if not SAFE_NAME.match(v) or ".." in v:
            raise ValueError("must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        minimum = MIN_IMAGE_SIZE.get(self.model.arch)
        if minimum and self.task != "classification" and self.data.image_size < minimum:
            raise ValueError(f"model.arch {self.model.arch} needs data.image_size >= {minimum}, "
                             f"got {self.data.image_size}")
        if self.model.metadata and self.task not in ("multitask", "classification"):
            raise ValueError(f"model.metadata needs a classification head (task multitask or classification), "
                             f"got task {self.task}")
        if self.model.cascade and self.task != "multitask":
            raise ValueError(f"model.cascade needs task multitask (segment, then classify), got task {self.task}")
        if self.task == "attributes" and self.data.layout not in ("auto", "isic2018-task2"):
            raise ValueError(f"task attributes needs data.layout isic2018-task2, got {self.data.layout}")
        for name in self.train.score_weights or {}:
            try:
                check_metric_name(name, self.task, "train.score_weights", loop=False)
            except ConfigError as err:  # as ValueError, so the message gets the file
                raise ValueError(str(err)) from None
        # Checked here, not only when the schedule is built: a sweep would otherwise find out
        # inside its trials, after Ray started and the data was read.
        if self.optim.warmup_epochs and self.optim.warmup_epochs >= self.train.epochs:
            raise ValueError(f"optim.warmup_epochs: {self.optim.warmup_epochs} must be less than train.epochs "
                             f"({self.train.epochs}); shorten the warm-up (in a search space, its range) "
                             f"or train for more epochs")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def section_of(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc[:-1]``."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line for the first error: 'source: key: problem'."""
    first = err.errors()[0]
    loc = tuple(p for p in first["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        section = section_of(loc)
        allowed = list(section.model_fields) if section else []
        return (f"{source}: {key}: unknown key{suggest(str(loc[-1]), allowed)} "
                f"(allowed: {', '.join(allowed)})")
    message = first["msg"]
    message = re.sub(r"^(Value error|Assertion failed), ", "", message)
    if first["type"].startswith("literal_error"):
        message = message.replace("Input should be", "allowed:")
        return f"{source}: {key}: got {first.get('input')!r}; {message}"
    if not loc:  # a check across sections: its message names the keys
        return f"{source}: {message}"
    if first["type"] == "value_error":
        if message.startswith(f"{key}."):  # a check across a section's keys names them itself
            return f"{source}: {message}"
        return f"{source}: {key}: {message}"
    return f"{source}: {key}: {message} (got {first.get('input')!r})"


def config_from_dict(raw: dict[str, Any] | None, source: str = "<config>") -> RunConfig:
    """Validate a plain dict (as read from YAML) into a RunConfig, or raise ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, loss, optim, train), "
                          f"got {type(raw).__name__}")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for missing files and bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: invalid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """'train.epochs=3' -> ('train.epochs', 3); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. train.epochs=3")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """Set ``target['a']['b'] = value`` for key 'a.b', creating sections as needed."""
    parts = key.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply dotted ``key=value`` overrides to a raw config dict (in place; returned)."""
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(raw, key, value)
    return raw


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load and validate a run config file, applying dotted overrides first."""
    raw = apply_overrides(read_yaml(path), overrides)
    source = str(path) + (" (with overrides)" if overrides else "")
    return config_from_dict(raw, source)


# Config keys that name files or folders. A relative one means relative to the folder the
# command runs in; Ray Tune runs each trial in a folder of its own, so a sweep resolves
# them in the driver (``absolute_paths``) before any trial sees them.
PATH_KEYS = ("data.root", "data.split_csv", "data.cache_dir", "out_dir")


def absolute_paths(raw: dict[str, Any], base_dir: str | Path) -> dict[str, Any]:
    """Make the path values of a raw config mapping absolute against ``base_dir`` (in place; returned).

    ``~`` is expanded; values that are not strings (a searched distribution, null) are left
    alone, and so is a ``mlflow.tracking_uri`` that is not a local file (a server URL).

    >>> absolute_paths({"data": {"root": "data/HAM10000"}}, "/home/me/derm")
    {'data': {'root': '/home/me/derm/data/HAM10000'}}
    """
    base = Path(base_dir).expanduser()
    for key in PATH_KEYS:
        *sections, name = key.split(".")
        node = raw
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(name), str) and node[name]:
            node[name] = os.path.normpath(base / Path(node[name]).expanduser())
    mlflow = raw.get("mlflow")
    if isinstance(mlflow, dict) and isinstance(mlflow.get("tracking_uri"), str):
        mlflow["tracking_uri"] = absolute_tracking_uri(mlflow["tracking_uri"], base)
    return raw


def absolute_tracking_uri(uri: str, base_dir: str | Path | None = None) -> str:
    """A tracking URI that means the same store from any working directory.

    A relative SQLite path (``sqlite:///mlflow.db``) or a plain folder (MLflow's file store)
    is made absolute against ``base_dir`` (default: the current folder); server URLs
    (``http://``, ``databricks``, ...) are returned as they are.

    >>> absolute_tracking_uri("sqlite:///runs/mlflow.db", "/home/me")
    'sqlite:////home/me/runs/mlflow.db'
    """
    base = Path(base_dir or Path.cwd()).expanduser()
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return "sqlite:///" + os.path.normpath(base / Path(path).expanduser()) if path != ":memory:" else uri
    if uri.startswith("file:") or "://" in uri or uri == "databricks" or uri.startswith("databricks"):
        return uri
    return os.path.normpath(base / Path(uri).expanduser())


def flatten_dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; an empty mapping is a value of its own.

    >>> flatten_dotted({"optim": {"lr": 1e-3, "name": "adam"}, "sweep": {}})
    {'optim.lr': 0.001, 'optim.name': 'adam', 'sweep': {}}
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_dotted(value, name + "."))
        else:
            flat[name] = value
    return flat


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the fully resolved config (every default filled in) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


__all__ = [
    "ConfigError", "DataConfig", "LossConfig", "ModelConfig", "MlflowConfig",
    "OptimConfig", "PATH_KEYS", "RunConfig", "TrainConfig", "SEG_LOSSES", "absolute_paths", "absolute_tracking_uri",
    "apply_overrides", "flatten_dotted",
    "config_from_dict", "load_config", "parse_override",
    "read_yaml", "save_config", "set_dotted",
]
