"""Ray Tune's OptunaSearch over a SearchSpace: TPE, random or grid, with seeded points first.

Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna ``COMPLETE`` with the last
reported score whenever a trial reported one, also for a trial ASHA stopped after one epoch,
so TPE models a 1-epoch score as a finished run's. `StoppedAsPrunedOptunaSearch` tells Optuna
how each trial really ended (`trial_end_state`): ``PRUNED`` at the epoch it reached, which
TPE ranks below every completed trial, by that epoch and then the score; ``COMPLETE`` for a
trial that ran ``train.epochs``; ``FAIL`` for an error.

Imports Optuna and Ray only when called, so loading and validating a space stays light: the
searcher class, a subclass of Ray's, lives in ``derm.search_space.optuna_search``, which
imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from derm.search_space.space import SearchSpace

if TYPE_CHECKING:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: a third of the budget, between 2 and 10."""
    return min(10, max(2, num_samples // 3))


def build_sampler(space: SearchSpace) -> "optuna.samplers.BaseSampler":
    """The Optuna sampler named by ``sweep.search``, seeded with ``sweep.seed``."""
    import optuna

    sweep = space.sweep
    if sweep.search == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=sweep.seed)
    if sweep.search == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    if sweep.search == "nsga2":  # the evolutionary multi-objective sampler (Deb et al. 2002)
        return optuna.samplers.NSGAIISampler(seed=sweep.seed)
    # multivariate + group model the joint distribution within each group of parameters that
    # appear together, which is what conditional (when/depends_on) spaces need; constant_liar
    # keeps concurrent trials from being handed the same promising point.
    return optuna.samplers.TPESampler(
        multivariate=True, group=True, constant_liar=True, seed=sweep.seed,
        n_startup_trials=tpe_startup_trials(sweep.num_samples),
    )


def build_searcher(space: SearchSpace) -> "OptunaSearch":
    """Ray Tune's ``OptunaSearch`` with ``space.define_by_run`` as its space: a
    `StoppedAsPrunedOptunaSearch` that tells Optuna how each trial ended (``max_epochs`` is
    ``train.epochs``; ``sweep.stopped_as_pruned`` false keeps Ray's COMPLETE for stopped trials).

    ``sweep.points_to_evaluate`` are seeded through OptunaSearch's own ``points_to_evaluate``:
    Ray 2.60 passes each to ``study.enqueue_trial`` also for a define-by-run space, and Optuna
    hands the enqueued values to the define-by-run function's ``suggest_*`` calls by name, so
    the first trials are these points (other parameters sampled). The searcher is not wrapped
    in a ConcurrencyLimiter: the sweep sets ``TuneConfig(max_concurrent_trials=
    space.sweep.max_concurrent)``, which wraps it. Metric and mode are set here, so the
    TuneConfig must not repeat them.
    """
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" is noise here
    with warnings.catch_warnings():
        # Optuna flags multivariate/group/constant_liar as experimental; we choose them knowingly.
        warnings.filterwarnings("ignore", message=".*experimental.*")
        from derm.search_space.optuna_search import StoppedAsPrunedOptunaSearch

        return StoppedAsPrunedOptunaSearch(
            max_epochs=space.max_epochs, stopped_as_pruned=space.sweep.stopped_as_pruned,
            space=space.define_by_run,
            metric=space.sweep.metric,  # a list for several objectives: Ray's OptunaSearch takes both
            mode=space.sweep.mode,
            points_to_evaluate=[dict(point) for point in space.seed_points] or None,
            sampler=build_sampler(space),
        )
