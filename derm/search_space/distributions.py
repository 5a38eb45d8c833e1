"""What one searched value may be: a choice, a float range, a log range or an integer range.

A distribution is parsed from its YAML mapping (``{choice: [a, b]}``, ``{uniform: [0.3, 2.0]}``,
``{loguniform: [1.0e-5, 3.0e-3]}``, ``{int: [0, 3], step: 1, log: false}``), knows the values
worth validating (every choice, both ends of a range), whether a value lies inside it, and
how to ask an Optuna trial for a value. Nothing here imports Optuna: a trial is duck-typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from derm.model_names import suggest

KINDS = ("choice", "uniform", "loguniform", "int")
# Keys a distribution mapping may carry beside its kind ("when" is read by the loader).
OPTIONS = {
    "choice": ("when",),
    "uniform": ("step", "when"),
    "loguniform": ("when",),
    "int": ("step", "log", "when"),
}


class InvalidSpec(ValueError):
    """A problem with one parameter's spec; the loader prefixes the file and the key."""


@dataclass(frozen=True)
class FixedValue:
    """A ``cases`` entry that sets a plain value instead of searching one."""

    value: Any

    def candidates(self) -> tuple:
        return (self.value,)


@dataclass(frozen=True)
class Distribution:
    """One searched value. ``choices`` for kind choice; ``low``/``high`` (inclusive) otherwise."""

    kind: str
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False

    def candidates(self) -> tuple:
        """The values to validate the config with: every choice, or both ends of the range."""
        return self.choices if self.kind == "choice" else (self.low, self.high)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` could have been drawn from this distribution."""
        if self.kind == "choice":
            return any(same_value(value, choice) for choice in self.choices)
        number = as_number(value)
        if number is None or not self.low <= number <= self.high:
            return False
        if self.kind == "int":
            return isinstance(number, int) and (number - self.low) % (self.step or 1) == 0
        return True

    def coerce(self, value: Any) -> Any:
        """``value`` in the type Optuna would have suggested (a YAML '1e-4' string becomes 1e-4)."""
        if self.kind == "choice":
            return next(choice for choice in self.choices if same_value(value, choice))
        number = as_number(value)
        return number if self.kind == "int" else float(number)

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask an ``optuna.Trial`` (or anything with its ``suggest_*`` methods) for a value."""
        if self.kind == "choice":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.kind == "loguniform")

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        extra = f" step {self.step}" if self.step else ""
        extra += " log" if self.log else ""
        return f"{self.kind} [{self.low}, {self.high}]{extra}"


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (YAML booleans and integers both appear in choices)."""
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def as_number(value: Any) -> int | float | None:
    """An int or float, accepting numeric text; None for anything else.

    PyYAML reads ``1e-5`` (no dot) as the string '1e-5'; it plainly means a number here.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def is_distribution(node: Any) -> bool:
    """A YAML mapping that describes a searched value rather than a fixed one."""
    return isinstance(node, dict) and any(k in node for k in (*KINDS, "depends_on"))


def parse_distribution(spec: dict[str, Any]) -> Distribution:
    """Parse ``{kind: args, ...options}`` into a Distribution, or raise InvalidSpec."""
    kinds = [k for k in KINDS if k in spec]
    if len(kinds) != 1:
        raise InvalidSpec(f"give exactly one of {', '.join(KINDS)} (got {', '.join(map(str, spec)) or 'nothing'})")
    kind = kinds[0]
    for key in spec:
        if key != kind and key not in OPTIONS[kind]:
            allowed = (kind, *OPTIONS[kind])
            raise InvalidSpec(f"unknown key {key!r} in a {kind} distribution{suggest(str(key), allowed)} "
                              f"(allowed: {', '.join(allowed)})")
    if kind == "choice":
        return _parse_choice(spec["choice"])
    low, high = _parse_bounds(kind, spec[kind])
    if kind == "int":
        return _parse_int(low, high, spec.get("step"), spec.get("log", False))
    if kind == "loguniform" and low <= 0:
        raise InvalidSpec(f"loguniform needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None and (as_number(step) is None or as_number(step) <= 0):
        raise InvalidSpec(f"step must be a positive number, got {step!r}")
    return Distribution(kind, low=float(low), high=float(high), step=None if step is None else float(as_number(step)))


def _parse_choice(choices: Any) -> Distribution:
    if not isinstance(choices, list) or not choices:
        raise InvalidSpec(f"choice needs a non-empty list of values, got {choices!r}")
    for value in choices:
        # Optuna's CategoricalDistribution holds only these types.
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise InvalidSpec(f"choice values must be plain values (text, number, true/false, null), got {value!r}")
    for i, value in enumerate(choices):
        if any(same_value(value, other) for other in choices[:i]):
            raise InvalidSpec(f"choice lists {value!r} twice")
    return Distribution("choice", choices=tuple(choices))


def _parse_bounds(kind: str, bounds: Any) -> tuple[int | float, int | float]:
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise InvalidSpec(f"{kind} needs [low, high], got {bounds!r}")
    low, high = (as_number(b) for b in bounds)
    if low is None or high is None:
        raise InvalidSpec(f"{kind} bounds must be numbers, got {bounds!r}")
    if kind == "int" and not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        raise InvalidSpec(f"int bounds must be whole numbers, got {bounds!r}")
    if low > high:
        raise InvalidSpec(f"low {low} above high {high}")
    return low, high


def _parse_int(low: int, high: int, step: Any, log: Any) -> Distribution:
    if not isinstance(log, bool):
        raise InvalidSpec(f"log must be true or false, got {log!r}")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
        raise InvalidSpec(f"int step must be a whole number >= 1, got {step!r}")
    if step is not None and (high - low) % step:
        raise InvalidSpec(f"int range {low}..{high} is not a whole number of steps of {step}")
    if log and (low < 1 or (step or 1) != 1):
        raise InvalidSpec("int with log: true needs low >= 1 and no step (Optuna samples log ranges with step 1)")
    return Distribution("int", low=low, high=high, step=step, log=log)
