"""Read a search-space YAML file into a validated SearchSpace, and its --demo variant.

Every check happens here, before Ray starts, as a one-line ConfigError naming the file and
the key: unknown keys (config, distribution and sweep keys), malformed distributions, every
candidate value of every parameter (each choice, both ends of each range, each case) built
into a RunConfig and validated, ``when``/``depends_on`` references, the sweep settings and the
seeded points. Loading imports neither torch, Ray nor Optuna.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

from derm.config import (
    RunConfig, absolute_paths, config_from_dict, flatten_dotted, parse_override, read_yaml, set_dotted,
)
from derm.errors import ConfigError
from derm.metric_names import check_metric_name
from derm.model_names import suggest
from derm.search_space.distributions import (
    Distribution, FixedValue, InvalidSpec, as_number, is_distribution, parse_distribution, same_value,
)
from derm.search_space.settings import DEFAULT_NUM_SAMPLES, SweepSettings, sweep_settings_from_dict
from derm.search_space.space import DEFAULT_CASE, Parameter, SearchSpace, flatten_config

log = logging.getLogger(__name__)

SECTIONS = (*RunConfig.model_fields, "sweep")
# Keys that only make sense inside a distribution mapping.
DISTRIBUTION_OPTIONS = ("when", "cases", "step", "log")

# --demo: a whole sweep on a 2-core CPU machine in under 10 minutes with at least 8 trials.
# 64 px images, no pretrained download, 4 short epochs, two 1-CPU trials at a time and an
# aggressive ASHA (halve the field after the first epoch). A file's own ``demo:`` mapping is
# applied after these, and command-line overrides after that.
DEMO_OVERRIDES: dict[str, Any] = {
    "data.image_size": 64,
    "model.encoder_weights": None,
    "train.epochs": 4,
    "train.batch_size": 16,
    "sweep.num_samples": 10,
    "sweep.grace_period": 1,
    "sweep.reduction_factor": 2,
    "sweep.max_concurrent": 2,
    "sweep.resources": {"cpu": 1, "gpu": 0},
}


def load_search_space(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SearchSpace:
    """Load and validate a search-space file, applying dotted ``key=value`` overrides.

    An override fixes a searched key (``optim.name=adam`` removes that parameter) or changes
    a fixed value or sweep setting (``sweep.num_samples=4``, ``sweep.resources.gpu=0.5``).

        >>> space = load_search_space("search_spaces/unet.yaml", ["train.epochs=5", "optim.name=adam"])
        >>> space.searched_keys[:2], space.max_epochs, "optim.name" in space.searched_keys
        (('model.encoder', 'loss.seg'), 5, False)
    """
    return build_search_space(read_yaml(path), str(path), tuple(overrides), base_dir=str(Path.cwd()))


def apply_demo(space: SearchSpace, data_root: str, layout: str) -> SearchSpace:
    """The same space for ``--demo``: DEMO_OVERRIDES, the demo data, then the file's ``demo:``.

    The space's own command-line overrides still apply last; the searched parameters stay
    unless a demo override fixes one.
    """
    demo = {**DEMO_OVERRIDES, "data.root": str(data_root), "data.layout": layout, **space.demo}
    return build_search_space(space.file_values, space.source, space.overrides, demo=demo,
                              base_dir=space.base_dir)


def build_search_space(file_values: dict[str, Any], source: str, overrides: tuple[str, ...] = (),
                       demo: dict[str, Any] | None = None, base_dir: str | None = None) -> SearchSpace:
    """Validate a search space given as the mapping read from ``source``.

    With ``base_dir``, relative paths in it (``data.root: data/HAM10000``) are made absolute
    against that folder (the one the sweep was started in): trials run in folders of their own.
    """
    where = source + (" (--demo)" if demo is not None else "") + (" (with overrides)" if overrides else "")
    raw = copy.deepcopy(file_values)
    demo_section = _parse_demo(raw.pop("demo", None), source)
    for key, value in (demo or {}).items():
        set_dotted(raw, key, copy.deepcopy(value))
    for text in overrides:
        set_dotted(raw, *parse_override(text))
    _check_sections(raw, where)
    if base_dir is not None:
        absolute_paths(raw, base_dir)
    sweep = sweep_settings_from_dict(raw.pop("sweep", None), where)
    raw.setdefault("name", Path(source).stem)

    fixed, specs = split_searched(raw, where)
    base_config = config_from_dict(fixed, where)
    base_values = flatten_config(base_config)
    # when/depends_on compare with values as written (loss.seg "dice+bce", not its parsed weights).
    base_values.update({k: v for k, v in flatten_dotted(fixed).items() if k in base_values})
    parameters = order_parameters([parse_parameter(key, spec, where) for key, spec in specs], base_values, where)
    for param in parameters:
        _check_candidates(param, parameters, fixed, where)
    space = SearchSpace(
        name=base_config.name, task=base_config.task, source=source, fixed=fixed,
        parameters=tuple(parameters), sweep=_check_sweep(sweep, parameters, base_config, where),
        demo=demo_section, base_config=base_config, base_values=base_values, overrides=tuple(overrides),
        is_demo=demo is not None, file_values=file_values, base_dir=base_dir,
    )
    # Points must fit the file as written; an override or --demo that rules a point out drops it.
    points = seed_points(space, where, strict=not overrides and demo is None)
    return dataclasses.replace(space, seed_points=points)


def _check_sections(raw: dict[str, Any], where: str) -> None:
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(f"{where}: {key}: unknown key{suggest(str(key), (*SECTIONS, 'demo'))} "
                              f"(allowed: {', '.join((*SECTIONS, 'demo'))})")


def _parse_demo(demo: Any, source: str) -> dict[str, Any]:
    if demo is None:
        return {}
    if not isinstance(demo, dict):
        raise ConfigError(f"{source}: demo: expected a mapping of dotted overrides (sweep.num_samples: 10), "
                          f"got {type(demo).__name__}")
    for key in demo:
        if not isinstance(key, str) or key.split(".")[0] not in SECTIONS:
            raise ConfigError(f"{source}: demo: {key}: expected a dotted key starting with one of "
                              f"{', '.join(SECTIONS)}")
    return dict(demo)


def split_searched(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
    """Separate the fixed values (nested, as in YAML) from the searched ones [(dotted key, spec)]."""
    fixed: dict[str, Any] = {}
    specs: list[tuple[str, dict]] = []

    def visit(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if is_distribution(value):
                specs.append((path, value))
            elif isinstance(value, dict) and any(k in value for k in DISTRIBUTION_OPTIONS):
                raise ConfigError(f"{where}: {path}: {', '.join(k for k in value if k in DISTRIBUTION_OPTIONS)} "
                                  f"needs a distribution (choice, uniform, loguniform, int or depends_on)")
            elif isinstance(value, dict) and value:
                visit(value, f"{path}.")
            else:
                set_dotted(fixed, path, value)

    visit(raw, "")
    return fixed, specs


def parse_parameter(key: str, spec: dict[str, Any], where: str) -> Parameter:
    """A Parameter from its YAML mapping; ConfigError 'file: key: problem' if malformed."""
    try:
        when = _parse_when(spec.get("when"))
        if "depends_on" not in spec:
            return Parameter(key, parse_distribution(spec), when)
        for option in spec:
            if option not in ("depends_on", "cases", "when"):
                raise InvalidSpec(f"unknown key {option!r} beside depends_on (allowed: depends_on, cases, when; "
                                  f"put distributions inside cases)")
        parent, cases = spec["depends_on"], spec.get("cases")
        if not isinstance(parent, str):
            raise InvalidSpec(f"depends_on needs a dotted key such as model.arch, got {parent!r}")
        if not isinstance(cases, dict) or not cases:
            raise InvalidSpec("depends_on needs cases: a mapping of the other key's values to a "
                              "distribution or a value (and optionally default:)")
        parsed = {value: _parse_case(case, value) for value, case in cases.items()}
        default = parsed.pop(DEFAULT_CASE, None)
        return Parameter(key, when=when, depends_on=parent, cases=tuple(parsed.items()), default_case=default)
    except InvalidSpec as err:
        raise ConfigError(f"{where}: {key}: {err}") from None


def _parse_case(case: Any, value: Any) -> Distribution | FixedValue:
    if not is_distribution(case):
        return FixedValue(case)
    if "when" in case or "depends_on" in case:
        raise InvalidSpec(f"case {value!r}: when and depends_on belong beside depends_on, not inside a case")
    return parse_distribution(case)


def _parse_when(when: Any) -> tuple[tuple[str, tuple], ...]:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when:
        raise InvalidSpec(f"when needs a mapping such as {{optim.name: sgd}} or {{optim.name: [sgd, rmsprop]}}, "
                          f"got {when!r}")
    pairs = []
    for key, allowed in when.items():
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:
            raise InvalidSpec(f"when: {key}: needs at least one value")
        pairs.append((str(key), values))
    return tuple(pairs)


def order_parameters(parameters: list[Parameter], base_values: dict[str, Any], where: str) -> list[Parameter]:
    """Check every when/depends_on reference; order parameters so each comes after those it reads."""
    by_key = {p.key: p for p in parameters}
    for param in parameters:
        _check_references(param, by_key, base_values, where)
    ordered: list[Parameter] = []
    pending = list(parameters)
    while pending:  # the first in file order whose references are already placed
        ready = next((p for p in pending if all(ref not in by_key or by_key[ref] in ordered
                                                for ref in _references(p))), None)
        if ready is None:
            raise ConfigError(f"{where}: {pending[0].key}: when/depends_on form a cycle among "
                              f"{', '.join(p.key for p in pending)}")
        ordered.append(ready)
        pending.remove(ready)
    return ordered


def _references(param: Parameter) -> list[str]:
    return [key for key, _ in param.when] + ([param.depends_on] if param.depends_on else [])


def _check_references(param: Parameter, by_key: dict[str, Parameter], base_values: dict[str, Any],
                      where: str) -> None:
    for ref in _references(param):
        how = "depends_on" if ref == param.depends_on else "when"
        if ref == param.key:
            raise ConfigError(f"{where}: {param.key}: {how} refers to the parameter itself")
        if ref not in by_key and ref not in base_values:
            raise ConfigError(f"{where}: {param.key}: {how}: {ref} is neither a searched parameter nor a config "
                              f"key{suggest(ref, [*by_key, *base_values])}")
        if ref not in by_key:
            continue  # a fixed key: it simply selects, or never selects, this parameter
        possible = by_key[ref].possible_values()
        if possible is None:
            raise ConfigError(f"{where}: {param.key}: {how}: {ref} is searched over a range; when and "
                              f"depends_on need a choice parameter or a fixed key")
        expected = [v for k, allowed in param.when if k == ref for v in allowed] if how == "when" \
            else [v for v, _ in param.cases]
        for value in expected:
            if not any(same_value(value, p) for p in possible):
                raise ConfigError(f"{where}: {param.key}: {how}: {value!r} is not a value of {ref} "
                                  f"(its values: {', '.join(map(repr, possible))})")


def _contexts(param: Parameter, by_key: dict[str, Parameter]) -> list[tuple[dict[str, Any], Distribution | FixedValue]]:
    """(values of the keys it reads, spec) pairs under which ``param``'s candidates are validated."""
    when = {key: allowed[0] for key, allowed in param.when}
    if param.depends_on is None:
        return [(when, param.distribution)]
    contexts = [({**when, param.depends_on: value}, spec) for value, spec in param.cases]
    if param.default_case is not None:
        parent = by_key.get(param.depends_on)
        others = [v for v in (parent.possible_values() if parent else ()) or ()
                  if not any(same_value(v, c) for c, _ in param.cases)]
        contexts += [({**when, param.depends_on: v}, param.default_case) for v in others] or \
            [(when, param.default_case)]
    return contexts


def _check_candidates(param: Parameter, parameters: list[Parameter], fixed: dict[str, Any], where: str) -> None:
    """Validate a RunConfig with each candidate value set (cheap: pydantic only, no torch)."""
    by_key = {p.key: p for p in parameters}
    for context, spec in _contexts(param, by_key):
        for value in spec.candidates():
            raw = copy.deepcopy(fixed)
            for key, context_value in context.items():
                set_dotted(raw, key, context_value)
            set_dotted(raw, param.key, value)
            try:
                config_from_dict(raw, where)
            except ConfigError as err:
                problem = str(err).removeprefix(f"{where}: ")
                if problem.startswith(f"{param.key}:"):
                    raise
                raise ConfigError(f"{where}: {param.key}: with {value!r}: {problem}") from None


def _check_sweep(sweep: SweepSettings, parameters: list[Parameter], base_config: RunConfig,
                 where: str) -> SweepSettings:
    """Checks that need both the sweep settings and the parameters; fills in num_samples."""
    keys = [p.key for p in parameters]
    try:
        for metric in sweep.metrics:
            check_metric_name(metric, base_config.task, "sweep.metric")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    num_samples = sweep.num_samples
    if sweep.search == "grid":
        for param in parameters:
            if param.depends_on or param.when or param.distribution.kind != "choice":
                raise ConfigError(f"{where}: sweep.search: grid needs unconditional choice parameters; "
                                  f"{param.key} is not (use tpe or random)")
        size = 1
        for param in parameters:
            size *= len(param.distribution.choices)
        if num_samples is not None and num_samples > size:
            raise ConfigError(f"{where}: sweep.num_samples: {num_samples} is more than the {size} "
                              f"grid combinations")
        num_samples = num_samples or size
    num_samples = num_samples or DEFAULT_NUM_SAMPLES
    if sweep.scheduler == "asha":
        if "train.epochs" in keys:
            raise ConfigError(f"{where}: train.epochs: cannot be searched with sweep.scheduler asha "
                              f"(train.epochs is ASHA's max_t); fix it or use scheduler fifo")
        if sweep.grace_period > base_config.train.epochs:
            raise ConfigError(f"{where}: sweep.grace_period: {sweep.grace_period} is more than train.epochs "
                              f"{base_config.train.epochs}")
    return sweep.model_copy(update={"num_samples": num_samples})


def seed_points(space: SearchSpace, where: str, strict: bool) -> tuple[dict[str, Any], ...]:
    """``sweep.points_to_evaluate`` as Optuna parameter names; ConfigError if strict, else skip and warn."""
    points = space.sweep.points_to_evaluate
    problems: list[str] = []
    if points and space.sweep.search == "grid":
        problems.append(f"{where}: sweep.points_to_evaluate: grid evaluates every combination anyway; "
                        f"remove the points or use tpe or random")
        points = []
    if len(points) > space.sweep.num_samples:
        problems.append(f"{where}: sweep.points_to_evaluate: {len(points)} points but num_samples is "
                        f"{space.sweep.num_samples}")
        points = points[:space.sweep.num_samples]
    named = []
    for index, point in enumerate(points):
        try:
            named.append(seed_point(space, point, index, where))
        except ConfigError as err:
            problems.append(str(err))
    if problems and strict:
        raise ConfigError(problems[0])
    for problem in problems:
        log.warning("%s: not seeded", problem)
    return tuple(named)


def seed_point(space: SearchSpace, point: dict[str, Any], index: int, where: str) -> dict[str, Any]:
    """A ``points_to_evaluate`` entry (dotted key -> value) as Optuna parameter names -> values.

    Keys left out are sampled. A key that exists only for some values of another searched
    key (when/depends_on) needs that key in the point too.
    """
    label = f"{where}: sweep.points_to_evaluate[{index}]"
    by_key = {p.key: p for p in space.parameters}
    for key, value in point.items():
        if key in by_key:
            continue
        if key not in space.base_values:
            raise ConfigError(f"{label}: {key} is not a searched parameter{suggest(key, by_key)} "
                              f"(searched: {', '.join(by_key)})")
        if not same_value(value, space.base_values[key]):
            raise ConfigError(f"{label}: {key} is fixed, not searched (fixed to {space.base_values[key]!r})")
    point = {key: value for key, value in point.items() if key in by_key}
    values = {**space.base_values, **point}
    named: dict[str, Any] = {}
    for param in space.parameters:
        if param.key not in point:
            continue
        for ref in _references(param):
            if ref in by_key and ref not in point:
                raise ConfigError(f"{label}: {param.key} depends on {ref}: give {ref} in the point too")
        selected = param.select(values)
        if selected is None:
            raise ConfigError(f"{label}: {param.key} is not searched for these values of "
                              f"{', '.join(_references(param))}")
        name, spec = selected
        value = point[param.key]
        if isinstance(spec, FixedValue):
            if not same_value(value, spec.value):
                raise ConfigError(f"{label}: {param.key}: {value!r} is outside the space (fixed to "
                                  f"{spec.value!r} here)")
            continue
        if not spec.contains(value):
            number_hint = " (not a number)" if spec.kind != "choice" and as_number(value) is None else ""
            raise ConfigError(f"{label}: {param.key}: {value!r} is outside the space{number_hint} "
                              f"({spec.describe()})")
        named[name] = values[param.key] = spec.coerce(value)
    return named
