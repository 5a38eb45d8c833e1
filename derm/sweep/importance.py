"""What mattered in a sweep: how much each searched parameter moved the metric.

The sweep's trials are rebuilt as an Optuna study (`sweep_trials`, `sweep_study`) with the
search space's own distributions, and two of Optuna's evaluators rank the parameters
(`parameter_importance`):

- **PED-ANOVA** (Watanabe et al., IJCAI 2023): how differently each parameter's values are
  spread among the best trials than among all counted trials. The best trials are the best
  tenth, at least `PED_ANOVA_MIN_TOP` and at most half: Optuna's default tenth would be 1-4
  trials in a 10-40 trial sweep, and its own docs ask for at least 5.
- **fANOVA** (Hutter et al., ICML 2014): the share of the metric's variance that a random
  forest fitted to (parameters -> metric) attributes to each parameter alone; the forest is
  seeded with ``sweep.seed``, so the same sweep gives the same numbers.

Both are shares of the evaluator's total (each sums to 1), over the same parameters.

**Which trials count.** Completed trials, at their best epoch (the leaderboard's row), and
the trials ASHA stopped early, at their best epoch before they were stopped. ASHA stops a
trial because it ranked low among the trials at the same rung: that is the sweep's own
evidence against its configuration. Leaving those trials out would keep only the survivors,
the configurations ASHA already found good, and hide the parameter that got the others
stopped (and an ASHA sweep of 20 trials may complete only a handful). The price: a stopped
trial's score is also lower for having trained fewer epochs, so the importances say what it
took to get far *and* score well; a FIFO sweep compares every trial at the same length.
A trial that went on at half its batch after running out of memory counts as what it
completed (`counted_status`). Failed trials never count (nor ones that ran out of memory
and stopped), nor running ones (their best epoch is not final), nor a trial without a
finite value of the metric or whose values lie outside this space (an older version of it).

**Conditional parameters.** Given trials whose parameter sets differ, Optuna's fANOVA
assesses only the parameters every trial has, without saying so; its PED-ANOVA (5.x)
assesses the others too, within the trials that have them: the two would rank different
sets and their shares would not compare. Here
both assess the parameters set in every counted trial; a ``when`` parameter that some
counted trial lacks is left out and named (`Importance.left_out`). A ``depends_on``
parameter (``model.encoder`` whose choices depend on ``model.arch``: Optuna names
``model.encoder__Segformer``, ``model.encoder__default``) is one config key with a value in
every trial, so its cases are merged into one parameter under that key: a choice over every
case's values, or a range over every case's range when they are ranges of one kind; cases
that cannot merge (a range beside a choice) stay apart under their Optuna names, as
conditional parameters.

**Minimum.** With fewer than `MIN_TRIALS` counted trials nothing is computed: the forest
would be fitted to a handful of points and the "best trials" would be one or two, numbers
that look precise and mean nothing. `Importance.note` says so, and why, in one line.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from derm.search_space import Distribution, Parameter, SearchSpace

MIN_TRIALS = 8
COUNTED = ("completed", "stopped early")
PED_ANOVA_TOP_SHARE = 0.1
PED_ANOVA_MIN_TOP = 5
# How the reasons a trial does not count are listed; a status not named here comes last.
NOT_COUNTED_ORDER = ("failed", "out of memory", "running", "without a score", "outside this space")


@dataclass(frozen=True)
class Importance:
    """A sweep's parameter importances, or why there are none (``reason``).

    ``shares``: evaluator ("PED-ANOVA", "fANOVA") -> parameter -> share of that evaluator's total;
    empty when not computed. ``counted``: status -> trials counted; ``not_counted``: why ->
    trials left out. ``study``: the rebuilt Optuna study of the counted trials (for
    ``optuna.visualization`` or your own analysis), None when no trial counted.
    """

    metric: str
    mode: str
    counted: dict[str, int]
    not_counted: dict[str, int]
    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    left_out: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    reason: str = ""
    top_trials: int = 0
    seed: int = 0
    minimum_trials: int = MIN_TRIALS
    study: optuna.Study | None = field(default=None, repr=False, compare=False)

    @property
    def computed(self) -> bool:
        return not self.reason

    @property
    def trials(self) -> int:
        return sum(self.counted.values())

    @property
    def parameters(self) -> list[str]:
        """The assessed parameters, most important first (by the mean of the evaluators' shares)."""
        names = list(next(iter(self.shares.values()), {}))
        return sorted(names, key=lambda n: (-np.mean([s[n] for s in self.shares.values()]), n))

    @property
    def note(self) -> str:
        """One line: which trials count and which parameters were left out, or why nothing was computed."""
        counted = ", ".join(f"{n} {status}" for status, n in self.counted.items())
        skipped = ", ".join(f"{n} {why}" for why, n in self.not_counted.items() if n)
        skipped = f"; not counted: {skipped}" if skipped else ""
        if not self.computed:
            return f"Parameter importance not computed: {self.reason} ({counted}{skipped})."
        left_out = (f" Left out, not set in every counted trial: {', '.join(self.left_out)}."
                    if self.left_out else "")
        return (f"Parameter importance for `{self.metric}` over {self.trials} trials ({counted}, each at its "
                f"best epoch{skipped}).{left_out}")

    def to_json(self) -> dict[str, Any]:
        """The ``importance`` entry of ``leaderboard.json``."""
        return {
            "computed": self.computed, "note": self.note, "reason": self.reason or None,
            "metric": self.metric, "mode": self.mode, "trials": self.trials, "minimum_trials": self.minimum_trials,
            "counted": self.counted, "not_counted": self.not_counted,
            "parameters": self.parameters, "shares": self.shares,
            "left_out": list(self.left_out), "merged": list(self.merged),
            "ped_anova_top_trials": self.top_trials, "fanova_seed": self.seed,
        }


def analysis_distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """Parameter name -> Optuna distribution, in the space's order, dependent cases merged where they can be.

        >>> from derm.search_space import build_search_space
        >>> space = build_search_space({"model": {"arch": {"choice": ["Unet", "Segformer"]}, "encoder": {
        ...     "depends_on": "model.arch", "cases": {"Segformer": {"choice": ["mit_b0"]},
        ...                                           "default": {"choice": ["resnet18", "resnet34"]}}}},
        ...     "optim": {"lr": {"loguniform": [1e-4, 1e-2]}}}, "space.yaml")
        >>> distributions = analysis_distributions(space)
        >>> list(distributions)
        ['model.arch', 'model.encoder', 'optim.lr']
        >>> distributions["model.encoder"].choices
        ('mit_b0', 'resnet18', 'resnet34')
    """
    distributions: dict[str, BaseDistribution] = {}
    for parameter in space.parameters:
        merged = _merged_distribution(parameter) if parameter.depends_on is not None else None
        if merged is not None:
            distributions[parameter.key] = merged
            continue
        for name, spec in parameter.specs():
            if isinstance(spec, Distribution):
                distributions[name] = optuna_distribution(spec)
    return distributions


def optuna_distribution(spec: Distribution) -> BaseDistribution:
    """The Optuna distribution ``Distribution.suggest`` samples from."""
    if spec.kind == "choice":
        return CategoricalDistribution(list(spec.choices))
    if spec.kind == "int":
        return IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step or 1)
    return FloatDistribution(spec.low, spec.high, log=spec.kind == "loguniform", step=spec.step)


def _merged_distribution(parameter: Parameter) -> BaseDistribution | None:
    values = parameter.possible_values()
    if values is not None:  # choices and fixed values: one choice over all of them
        plain = all(v is None or isinstance(v, (str, int, float, bool)) for v in values)
        return CategoricalDistribution(list(values)) if plain else None
    specs = [spec for _, spec in parameter.specs()]
    if not all(isinstance(s, Distribution) for s in specs) or len({(s.kind, s.log) for s in specs}) != 1:
        return None
    low, high = min(s.low for s in specs), max(s.high for s in specs)
    if specs[0].kind == "int":  # every case's values lie on step 1
        return IntDistribution(low, high, log=specs[0].log)
    return FloatDistribution(low, high, log=specs[0].kind == "loguniform")


class _OutsideSpace(Exception):
    """A trial's recorded value is missing or not one this space can draw."""


def _trial_params(row: pd.Series, space: SearchSpace, distributions: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The trial's values by analysis name, walked through the space (so ``when`` holds as it did)."""
    recorded = {k.removeprefix("config."): _plain(v) for k, v in row.items()
                if k.startswith("config.") and not _is_missing(v)}

    def choose(name: str, key: str, spec: Distribution) -> Any:
        value = recorded.get(name, recorded.get(key))
        if spec.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)  # an int column with a NaN in it holds floats
        if value is None or not spec.contains(value):
            raise _OutsideSpace(name)
        return spec.coerce(value)

    params = {}
    for name, key, value, searched in space.walk(choose):
        if key in distributions:  # a merged dependent parameter: its fixed cases are values too
            params[key] = value
        elif searched:
            params[name] = value
    return params


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def counted_status(status: str) -> str | None:
    """The `COUNTED` status a board status counts as, or None when the trial does not count.

    A qualified status (a trial that went on at half its batch after running out of memory)
    counts as what it qualifies: its score is the configuration's, under the memory it had.

        >>> counted_status("completed"), counted_status("stopped early (batch halved)"), counted_status("failed")
        ('completed', 'stopped early', None)
    """
    base = status.split(" (", 1)[0]
    return base if base in COUNTED else None


def sweep_trials(board: pd.DataFrame, space: SearchSpace) -> tuple[list[FrozenTrial], dict[str, int]]:
    """The counted trials of a ranked board (`derm.sweep.board.rank_trials`) as Optuna trials, in
    board order, and by reason the number of trials not counted.

    Each trial's value is the metric at its best epoch; its ``user_attrs`` hold ``trial_id``,
    ``status`` and ``epochs_trained``.
    """
    distributions = analysis_distributions(space)
    metric = space.sweep.primary_metric
    trials, skipped = [], Counter()
    for _, row in board.iterrows():
        status = str(row.get("status"))
        value = pd.to_numeric(row.get(metric), errors="coerce")
        if counted_status(status) is None:
            skipped[status] += 1
            continue
        if not np.isfinite(value):
            skipped["without a score"] += 1
            continue
        try:
            params = _trial_params(row, space, distributions)
        except _OutsideSpace:
            skipped["outside this space"] += 1
            continue
        epochs = pd.to_numeric(row.get("epochs_trained"), errors="coerce")
        trials.append(optuna.trial.create_trial(
            value=float(value), params=params, distributions={n: distributions[n] for n in params},
            user_attrs={"trial_id": str(row.get("trial_id")), "status": status,
                        "epochs_trained": int(epochs) if np.isfinite(epochs) else None}))
    order = {why: i for i, why in enumerate(NOT_COUNTED_ORDER)}
    return trials, dict(sorted(skipped.items(), key=lambda item: order.get(item[0], len(order))))


def sweep_study(board: pd.DataFrame, space: SearchSpace) -> optuna.Study:
    """An in-memory Optuna study of the board's counted trials (see `sweep_trials`)."""
    trials, _ = sweep_trials(board, space)
    return _study(trials, space.sweep.primary_mode)


def _study(trials: list[FrozenTrial], mode: str) -> optuna.Study:
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(logging.WARNING)  # "A new study created in memory" is noise in an export
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    finally:
        logger.setLevel(level)
    study.add_trials(trials)
    return study


def parameter_importance(board: pd.DataFrame, space: SearchSpace, min_trials: int = MIN_TRIALS) -> Importance:
    """PED-ANOVA and fANOVA importances of the searched parameters, over the counted trials.

    Not computed (``reason`` set, ``shares`` empty) with fewer than ``min_trials`` counted
    trials, when no searched parameter is set in every counted trial, or when every counted
    trial has the same score.
    """
    trials, skipped = sweep_trials(board, space)
    statuses = Counter(counted_status(t.user_attrs["status"]) for t in trials)
    names = list(analysis_distributions(space))
    shared = [n for n in names if trials and all(n in t.params for t in trials)]
    result = {"metric": space.sweep.primary_metric, "mode": space.sweep.primary_mode,
              "counted": {s: statuses[s] for s in COUNTED}, "not_counted": skipped,
              "left_out": tuple(n for n in names if n not in shared),
              "merged": tuple(p.key for p in space.parameters if p.key in names and p.depends_on is not None),
              "seed": space.sweep.seed, "minimum_trials": min_trials, "study": _study(trials, space.sweep.primary_mode) if trials else None}
    reason = _why_not(trials, shared, min_trials)
    if reason:
        return Importance(**result, reason=reason)
    top = min(max(math.ceil(PED_ANOVA_TOP_SHARE * len(trials)), PED_ANOVA_MIN_TOP), len(trials) // 2)
    # Optuna keeps the ceil(q * n) best; (top - 1/2) / n gives exactly ``top`` whatever the rounding.
    evaluators = {
        "PED-ANOVA": optuna.importance.PedAnovaImportanceEvaluator(target_quantile=(top - 0.5) / len(trials)),
        "fANOVA": optuna.importance.FanovaImportanceEvaluator(seed=space.sweep.seed),
    }
    shares = {label: {name: float(share) for name, share in optuna.importance.get_param_importances(
        result["study"], evaluator=evaluator, params=shared).items()} for label, evaluator in evaluators.items()}
    return Importance(**result, shares=shares, top_trials=top)


def _why_not(trials: list[FrozenTrial], shared: list[str], min_trials: int) -> str:
    if len(trials) < max(min_trials, 2):
        return f"{len(trials)} trials count, fewer than the {min_trials} it needs"
    if not shared:
        return "no searched parameter is set in every counted trial"
    if len({t.value for t in trials}) == 1:
        return "every counted trial has the same score"
    return ""
