"""Where the sweep decides which trials run: Ray Tune's Tuner, composed in one place.

The Optuna define-by-run searcher from the search space (``derm.search_space``), ASHA (or
FIFO) stopping trials early, the per-trial resources, checkpoints (best k kept), failure
retries and the callbacks of ``derm.sweep.callbacks``, around the trainable of
``derm.sweep.trainable``. This module imports Ray.
"""

from __future__ import annotations

import logging
import os

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from derm.data.splits import read_split
from derm.search_space import Resources, build_searcher
from derm.sweep.callbacks import ChildRunStatus, SweepConsole, TrialMessages
from derm.sweep.plan import SweepPlan
from derm.sweep.trainable import train_trial


def run_sweep(plan: SweepPlan, resources: Resources, *, resume: bool = False,
              warm_trials: list | None = None) -> tune.ResultGrid:
    """Run (or resume) the sweep on the Ray started by ``start_ray``; returns Ray Tune's ResultGrid.

    ``warm_trials`` (Optuna trials of earlier sweeps, ``derm.sweep.warm_start``) are added to
    the searcher's study before its first suggestion.
    """
    split = read_split(plan.sweep_dir / "split.csv")
    messages = TrialMessages.start()
    trainable = tune.with_parameters(train_trial, space=plan.space,
                                     split_records={str(k): v for k, v in split.items()},
                                     tracking_uri=plan.tracking_uri, parent_run_id=plan.parent_run_id,
                                     cpus=resources.cpu, messages=messages)
    return build_tuner(plan, trainable, resources=resources, resume=resume, messages=messages,
                       warm_trials=warm_trials).fit()


def build_tuner(plan: SweepPlan, trainable, *, resources: Resources | None = None, resume: bool = False,
                reuse_actors: bool = True, messages: TrialMessages | None = None,
                warm_trials: list | None = None) -> tune.Tuner:
    """The sweep's Tuner around ``trainable`` (a function trainable; ``resources`` per trial are added,
    default the space's ``sweep.resources``).

    ``reuse_actors`` keeps each trial's worker process for the next trial with the same
    resources: starting a fresh Ray actor costs about 1.5 s per trial on 2 cores
    (benchmarks/trial_startup.py), which a sweep of short trials pays many times over.
    """
    space, settings = plan.space, plan.space.sweep
    resources = resources or settings.resources
    trainable = tune.with_resources(trainable, {"cpu": resources.cpu, "gpu": resources.gpu})
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # lose little to a killed driver
    # The console is SweepConsole's: Ray's own reporter would add its boxes and, for a failed
    # trial, a path in Ray's staging folder under /tmp instead of the sweep folder.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Every epoch checkpoints (for resume); Ray's warning about frequent snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A trial out of memory reports its metric at -inf (derm.sweep.trainable), which Ray's
    # TensorBoard logger passes to tensorboardX, which warns "NaN or Inf found" on the console.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    callbacks = [SweepConsole(settings.primary_metric, settings.primary_mode, space.max_epochs, messages,
                              plan.reported, num_samples=settings.num_samples),
                 ChildRunStatus(plan.tracking_uri, f"derm-sweep-{space.name}", plan.parent_run_id)]
    if resume:
        # Ray restores the run config, callbacks included, from the experiment state; the
        # trainable (with its parameters) is the one given here.
        return tune.Tuner.restore(plan.experiment_path, trainable, resume_unfinished=True, resume_errored=False)
    # ASHA counts epochs, not Ray's reports: a trial's out-of-memory result (derm.sweep.trainable)
    # is one more report but no new epoch, so no rung records its placeholder score.
    asha_metric = settings.asha_metric or settings.primary_metric  # with several metrics: sweep.asha_metric
    scheduler = (ASHAScheduler(time_attr="epoch", metric=asha_metric, mode=settings.mode_of(asha_metric),
                               max_t=space.max_epochs, grace_period=settings.grace_period,
                               reduction_factor=settings.reduction_factor)
                 if settings.scheduler == "asha" else FIFOScheduler())
    searcher = build_searcher(space)
    if warm_trials:
        searcher.study.add_trials(warm_trials)  # before the first suggestion: TPE starts informed
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=settings.num_samples,
                                    max_concurrent_trials=settings.max_concurrent,
                                    reuse_actors=reuse_actors,
                                    trial_name_creator=lambda t: t.trial_id,
                                    trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
        run_config=tune.RunConfig(
            name=plan.sweep_dir.name, storage_path=plan.experiment_path.rsplit("/", 1)[0], verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints,
                                                    checkpoint_score_attribute=settings.primary_metric,
                                                    checkpoint_score_order=settings.primary_mode),
            failure_config=tune.FailureConfig(max_failures=settings.max_retries),
            callbacks=callbacks,
        ),
    )
