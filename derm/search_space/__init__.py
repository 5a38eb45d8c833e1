"""Search spaces: a YAML run config whose leaves may be distributions, plus a ``sweep:`` section.

    space = load_search_space("search_spaces/unet.yaml", ["sweep.num_samples=4"])
    searcher = build_searcher(space)                # Ray Tune's OptunaSearch (imports Ray)
    cfg = resolve_trial_config(space, trial_config)  # inside the trainable: a RunConfig

The format is described in docs/search_spaces.md. Loading validates everything and imports
neither torch, Ray nor Optuna; ``build_searcher`` imports Optuna and Ray.
"""

from derm.search_space.distributions import Distribution, FixedValue
from derm.search_space.loading import DEMO_OVERRIDES, apply_demo, build_search_space, load_search_space
from derm.search_space.searcher import build_sampler, build_searcher, tpe_startup_trials
from derm.search_space.settings import DEFAULT_NUM_SAMPLES, Resources, SweepSettings
from derm.search_space.space import (
    CASE_SEPARATOR, Parameter, SearchSpace, config_key, resolve_trial_config, trial_overrides,
)

__all__ = [
    "CASE_SEPARATOR", "DEFAULT_NUM_SAMPLES", "DEMO_OVERRIDES", "Distribution", "FixedValue", "Parameter",
    "Resources", "SearchSpace", "SweepSettings", "apply_demo", "build_sampler", "build_search_space",
    "build_searcher", "config_key", "load_search_space", "resolve_trial_config", "tpe_startup_trials",
    "trial_overrides",
]
