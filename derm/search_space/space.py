"""A loaded search space: fixed values, ordered parameters, and what a trial makes of them.

``SearchSpace.define_by_run`` is the function Ray Tune's ``OptunaSearch`` calls for every new
trial: it asks the Optuna trial for each active parameter in order, so ``when`` conditions and
``depends_on`` cases see the values already drawn. ``resolve_trial_config`` turns the drawn
parameters back into a validated ``RunConfig``.

Parameter names in Optuna (and so in Ray's trial configs) are the dotted config keys; a
dependent parameter's name carries its case after ``CASE_SEPARATOR``, e.g.
``model.encoder__Segformer``, because Optuna refuses one name with different categorical
choices.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from derm.config import RunConfig, config_from_dict, set_dotted
from derm.errors import ConfigError
from derm.search_space.distributions import Distribution, FixedValue, same_value
from derm.search_space.settings import SweepSettings

# "@" would read better, but MLflow rejects parameter names outside [/\w.\- :] and Ray's
# MLflowLoggerCallback logs trial configs as parameters; "/" is Ray's nesting separator.
CASE_SEPARATOR = "__"
DEFAULT_CASE = "default"

Spec = Distribution | FixedValue


def case_label(value: Any) -> str:
    """How a case value appears in a parameter name: YAML spelling, MLflow-safe characters."""
    if isinstance(value, bool) or value is None:
        text = {True: "true", False: "false", None: "null"}[value]
    else:
        text = str(value)
    return re.sub(r"[^\w.\-]", "_", text)


def config_key(param_name: str) -> str:
    """'model.encoder__Segformer' -> 'model.encoder' (names without a case are returned as they are)."""
    return param_name.split(CASE_SEPARATOR, 1)[0]


@dataclass(frozen=True)
class Parameter:
    """One searched config key.

    Plain parameters have a ``distribution``; dependent ones (``depends_on``) have ``cases``
    (parent value -> distribution or fixed value) and an optional ``default_case`` for any
    other parent value. ``when`` pairs (key, allowed values) must all hold for it to exist.
    """

    key: str
    distribution: Distribution | None = None
    when: tuple[tuple[str, tuple], ...] = ()
    depends_on: str | None = None
    cases: tuple[tuple[Any, Spec], ...] = ()
    default_case: Spec | None = None

    def is_active(self, values: dict[str, Any]) -> bool:
        return all(any(same_value(values.get(key), v) for v in allowed) for key, allowed in self.when)

    def case_name(self, case_value: Any) -> str:
        return f"{self.key}{CASE_SEPARATOR}{case_label(case_value)}"

    def select(self, values: dict[str, Any]) -> tuple[str, Spec] | None:
        """(Optuna name, spec) given the values so far, or None when the parameter is absent."""
        if not self.is_active(values):
            return None
        if self.depends_on is None:
            return self.key, self.distribution
        parent = values.get(self.depends_on)
        for case_value, spec in self.cases:
            if same_value(parent, case_value):
                return self.case_name(case_value), spec
        if self.default_case is not None:
            return self.case_name(DEFAULT_CASE), self.default_case
        return None

    def specs(self) -> list[tuple[str, Spec]]:
        """Every (Optuna name, spec) this parameter can take."""
        if self.depends_on is None:
            return [(self.key, self.distribution)]
        named = [(self.case_name(v), spec) for v, spec in self.cases]
        if self.default_case is not None:
            named.append((self.case_name(DEFAULT_CASE), self.default_case))
        return named

    def possible_values(self) -> tuple | None:
        """Every value this parameter can take, or None where it is a range."""
        values: list = []
        for _, spec in self.specs():
            if isinstance(spec, Distribution) and spec.kind != "choice":
                return None
            values.extend(v for v in spec.candidates() if not any(same_value(v, seen) for seen in values))
        return tuple(values)


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """A validated search-space file. Build it with ``load_search_space``; use it read-only.

    ``fixed`` holds the config values that are not searched (nested, as in YAML);
    ``base_config`` validates them with every default filled in, and ``base_values`` is that
    config flattened to dotted keys (what ``when`` and ``depends_on`` read for unsearched keys).
    ``seed_points`` are ``sweep.points_to_evaluate`` translated to Optuna parameter names.
    """

    name: str
    task: str
    source: str
    fixed: dict[str, Any]
    parameters: tuple[Parameter, ...]
    sweep: SweepSettings
    demo: dict[str, Any]
    base_config: RunConfig
    base_values: dict[str, Any]
    seed_points: tuple[dict[str, Any], ...] = ()
    overrides: tuple[str, ...] = ()
    is_demo: bool = False
    file_values: dict[str, Any] = field(default_factory=dict, repr=False)  # the YAML as read, for apply_demo
    base_dir: str | None = None  # the folder relative paths were resolved against

    @property
    def searched_keys(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.parameters)

    @property
    def points_to_evaluate(self) -> list[dict[str, Any]]:
        """The file's known configurations, dotted key -> value."""
        return self.sweep.points_to_evaluate

    @property
    def max_epochs(self) -> int:
        """train.epochs, fixed for the sweep (ASHA's max_t)."""
        return self.base_config.train.epochs

    def grid(self) -> dict[str, list]:
        """Optuna name -> choices, for GridSampler (only for choice-only, unconditional spaces)."""
        return {name: list(spec.choices) for p in self.parameters for name, spec in p.specs()}

    @property
    def grid_size(self) -> int:
        size = 1
        for choices in self.grid().values():
            size *= len(choices)
        return size

    def walk(self, choose: Callable[[str, str, Distribution], Any]) -> list[tuple[str, str, Any, bool]]:
        """Visit the active parameters in order: [(Optuna name, key, value, searched)].

        ``choose(name, key, distribution)`` gives each searched value; a case with a fixed
        value is taken as it is (searched False).
        """
        values = dict(self.base_values)
        visited = []
        for param in self.parameters:
            selected = param.select(values)
            if selected is None:
                continue
            name, spec = selected
            searched = isinstance(spec, Distribution)
            value = choose(name, param.key, spec) if searched else spec.value
            values[param.key] = value
            visited.append((name, param.key, value, searched))
        return visited

    def define_by_run(self, trial: Any) -> dict[str, Any] | None:
        """Suggest every active parameter on an ``optuna.Trial``; Ray's OptunaSearch space.

        Returns the constants set by fixed-value cases (Ray merges them into the trial's
        config), or None when there are none.

            >>> import optuna
            >>> from derm.search_space import load_search_space
            >>> space = load_search_space("search_spaces/unet.yaml")
            >>> trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
            >>> space.define_by_run(trial)
            >>> list(trial.params)[:3]
            ['model.encoder', 'loss.seg', 'loss.seg_weight']
        """
        visited = self.walk(lambda name, key, spec: spec.suggest(trial, name))
        constants = {key: value for _, key, value, searched in visited if not searched}
        return constants or None


def _lookup(space: SearchSpace, params: dict[str, Any]) -> Callable[[str, str, Distribution], Any]:
    unknown = [name for name in params if config_key(name) not in space.searched_keys]
    if unknown:
        raise ConfigError(f"{space.source}: trial parameter {unknown[0]} is not searched by this space "
                          f"(searched: {', '.join(space.searched_keys)})")
    by_key = {config_key(name): value for name, value in params.items()}

    def choose(name: str, key: str, spec: Distribution) -> Any:
        if name in params:
            return params[name]
        if key in by_key:
            return by_key[key]
        raise ConfigError(f"{space.source}: trial parameters lack {name} ({spec.describe()})")

    return choose


def trial_overrides(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """The trial's searched values as dotted config keys (case suffixes stripped), in order.

    ``params`` is a Ray trial config or an Optuna ``trial.params``; parameters that are not
    active for these values (e.g. momentum when the optimiser is adam) are left out.
    """
    return {key: value for _, key, value, _ in space.walk(_lookup(space, params))}


def resolve_trial_config(space: SearchSpace, params: dict[str, Any]) -> RunConfig:
    """The space's fixed values plus a trial's parameters, validated into a RunConfig.

    ``name`` is the space's name; the sweep decides each trial's folder.
    """
    raw = copy.deepcopy(space.fixed)
    for key, value in trial_overrides(space, params).items():
        set_dotted(raw, key, value)
    return config_from_dict(raw, f"{space.source} (trial)")


def flatten_config(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every field, descending into sections but not into dict values."""
    values = {}
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, BaseModel):
            values.update(flatten_config(value, f"{prefix}{name}."))
        else:
            values[f"{prefix}{name}"] = value
    return values
