"""The ``sweep:`` section of a search-space file: how many trials, which searcher, scheduler and resources."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from derm.errors import ConfigError
from derm.model_names import suggest

DEFAULT_NUM_SAMPLES = 20


class Resources(BaseModel):
    """What one trial reserves. DataLoader workers run inside the trial's CPU reservation."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(1.0, gt=0, description="CPUs per trial (fractions allowed)")
    gpu: float = Field(0.0, ge=0, description="a fraction in (0, 1] shares one GPU; a whole number reserves that many")

    @field_validator("gpu")
    @classmethod
    def _fraction_or_whole(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"{v} is neither a fraction in (0, 1] of one GPU nor a whole number of GPUs")
        return v


class SweepSettings(BaseModel):
    """Validated ``sweep:`` section; the sweep module composes Ray Tune objects from it."""

    model_config = ConfigDict(extra="forbid")

    metric: str | list[str] = Field("score", description="the reported metric to optimise, or a list of "
                                                          "several (multi-objective: Pareto front)")
    mode: Literal["max", "min"] | list[Literal["max", "min"]] = Field(
        "max", description="max or min; a list, one per metric, with several metrics")
    asha_metric: str | None = Field(None, description="with several metrics and scheduler asha: the one of them "
                                                      "ASHA stops trials by")
    num_samples: int | None = Field(None, ge=1, description="trials; default: the grid size for grid, else 20")
    search: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: int = Field(3, ge=2, description="ASHA: keep 1/reduction_factor of trials per rung")
    stopped_as_pruned: bool = Field(
        True, description="tell Optuna a trial stopped before train.epochs as PRUNED at the epoch it reached; "
                          "false: Ray's default, COMPLETE with its last score")
    max_concurrent: int | None = Field(None, ge=1, description="trials running at once; default: as resources allow")
    resources: Resources = Field(default_factory=Resources)
    keep_checkpoints: int = Field(1, ge=1, description="checkpoints kept per trial")
    max_retries: int = Field(0, ge=0, description="retries of a failed trial")
    seed: int = 0
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list, description="known configurations (dotted key -> value), evaluated first")


    @model_validator(mode="after")
    def _objectives(self) -> "SweepSettings":
        several = isinstance(self.metric, list)
        if several != isinstance(self.mode, list):
            raise ValueError("metric and mode: give one metric and one mode, or lists of equal length "
                             "(e.g. metric: [balanced_accuracy, dice], mode: [max, max])")
        if several:
            if len(self.metric) < 2 or len(set(self.metric)) != len(self.metric):
                raise ValueError(f"metric: a list names two or more different metrics, got {self.metric}")
            if len(self.mode) != len(self.metric):
                raise ValueError(f"mode: one mode per metric ({len(self.metric)}), got {self.mode}")
        if self.asha_metric is not None and self.asha_metric not in self.metrics:
            raise ValueError(f"asha_metric: {self.asha_metric!r} is not one of the sweep's metrics "
                             f"({', '.join(self.metrics)})")
        if several and self.scheduler == "asha" and self.asha_metric is None:
            raise ValueError(f"scheduler: asha stops trials by one number but the sweep has {len(self.metric)} "
                             f"metrics; set sweep.asha_metric (one of {', '.join(self.metric)}) or "
                             f"sweep.scheduler: fifo")
        return self

    @property
    def metrics(self) -> tuple[str, ...]:
        """The sweep's metrics (objectives), one or several."""
        return tuple(self.metric) if isinstance(self.metric, list) else (self.metric,)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.mode) if isinstance(self.mode, list) else (self.mode,)

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def primary_metric(self) -> str:
        """The one metric where one number is needed (a trial's best epoch, the checkpoints kept,
        the console's best so far, the ties on the leaderboard): the first."""
        return self.metrics[0]

    @property
    def primary_mode(self) -> str:
        return self.modes[0]

    def mode_of(self, metric: str) -> str:
        return dict(zip(self.metrics, self.modes))[metric]


def sweep_settings_from_dict(raw: Any, source: str) -> SweepSettings:
    """Validate the ``sweep:`` mapping, raising ConfigError 'source: sweep.key: problem'."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: sweep: expected a mapping of settings, got {type(raw).__name__}")
    try:
        return SweepSettings.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(["sweep", *loc])
    if first["type"] == "extra_forbidden":
        model = Resources if loc[0] == "resources" and len(loc) > 1 else SweepSettings
        allowed = list(model.model_fields)
        return f"{key}: unknown key{suggest(loc[-1], allowed)} (allowed: {', '.join(allowed)})"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and not loc:  # a check across keys: its message starts with the key
        return f"sweep.{message}"
    if first["type"] == "value_error":
        return f"{key}: {message}"
    return f"{key}: {message} (got {first.get('input')!r})"
