"""How sure a leaderboard can be of its order: intervals, and a paired comparison with rank 1.

A trial's score is one number on one validation split; on a few hundred images two
configurations often differ by less than that number's own sampling error. Each trial
keeps its best epoch's per-image validation predictions (``val_predictions.npz`` in its
checkpoints; ``derm.metrics.per_image``). Resampling the validation images gives, per
trial, a 95% percentile bootstrap interval of the sweep metric, and, on the very same
resamples (a paired bootstrap), the share of resamples in which the trial scores at least
as well as rank 1. A trial with a share of at least 5% is not distinguishable from rank 1
at the 5% level: the leaderboard marks it. Resamples are drawn within each true class
where the task has a diagnosis head (as retrain-best's intervals; class-averaged metrics
then score every class on every resample), over images otherwise; seeded, so the same
sweep gives the same table.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from derm.metric_names import LOOP_METRICS
from derm.metrics import sweep_score
from derm.metrics.bootstrap import bootstrap_ci, share_at_least_as_good
from derm.metrics.per_image import CLASS_TASKS, VAL_PREDICTIONS, SplitPredictions
from derm.metrics.score import DEFAULT_SCORE_WEIGHTS
from derm.search_space import SearchSpace

RESAMPLES = 1000
SEED = 0
LEVEL = 0.05
CI_LOW, CI_HIGH, SHARE, TIED = "ci95_low", "ci95_high", "share_vs_rank1", "tied_with_rank1"


def trial_predictions(experiment_path: str, trial_id: str) -> SplitPredictions | None:
    """The trial's best-epoch validation predictions, from its newest checkpoint that has them.

    ``experiment_path`` is the sweep's Ray Tune experiment (a folder or a storage URI).
    None when the trial kept none (it failed before its first epoch, or was run by an
    older derm).
    """
    if "://" not in experiment_path:
        found = sorted(Path(experiment_path).glob(f"trial_{trial_id}/checkpoint_*/{VAL_PREDICTIONS}"))
        return SplitPredictions.load(found[-1]) if found else None
    import io

    import pyarrow.fs

    filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment_path)
    selector = pyarrow.fs.FileSelector(f"{root}/trial_{trial_id}", allow_not_found=True, recursive=True)
    found = sorted(info.path for info in filesystem.get_file_info(selector) if info.base_name == VAL_PREDICTIONS)
    if not found:
        return None
    with filesystem.open_input_stream(found[-1]) as stream:
        return SplitPredictions.load(io.BytesIO(stream.read()))


def metric_statistic(predictions: SplitPredictions, metric: str, space: SearchSpace):
    """indices -> {metric: value} of ``predictions`` on those images (the score as the sweep weighs it)."""
    weights = space.base_config.train.score_weights
    if metric == "score":
        names = tuple(weights or DEFAULT_SCORE_WEIGHTS[space.task])
        return lambda indices: {metric: sweep_score(predictions.metrics(indices, only=names), space.task, weights)}
    return lambda indices: {metric: predictions.metrics(indices, only=(metric,)).get(metric, math.nan)}


def add_uncertainty(board: pd.DataFrame, space: SearchSpace, experiment_path: str, *,
                    resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """The board with each trial's interval of the sweep metric and its comparison with rank 1.

    Adds ``ci95_low``, ``ci95_high``, ``share_vs_rank1`` (of resamples in which the trial
    scores at least as well as rank 1) and ``tied_with_rank1`` (share >= 5%; rank 1 itself
    is True). Rows without predictions, and metrics the predictions cannot give (loss,
    timing, size), get NaN / False. Every trial is scored on the validation images all of
    them share, in one order, so the resamples are the same images for every trial.
    """
    board = board.copy()
    for column in (CI_LOW, CI_HIGH, SHARE):
        board[column] = math.nan
    board[TIED] = False
    # Several objectives: the first one's intervals; "ties with rank 1" would need one order.
    metric, mode = space.sweep.primary_metric, space.sweep.primary_mode
    if board.empty or metric in set(LOOP_METRICS) - {"score"} or "epoch" not in board:
        return board
    found = {}
    for index, row in board.iterrows():
        predictions = trial_predictions(experiment_path, str(row["trial_id"])) if row["epochs_trained"] > 0 else None
        # Only the predictions of the epoch the row reports (a checkpoint may lag the best epoch).
        if predictions is not None and predictions.epoch == row["epoch"]:
            found[index] = predictions
    if not found:
        return board
    common = sorted(set.intersection(*(set(p.image_ids) for p in found.values())))
    aligned = {index: p.select([p.image_ids.index(i) for i in common]) for index, p in found.items()}
    first = next(iter(aligned.values()))
    strata = first.labels if space.task in CLASS_TASKS and first.labels is not None else None
    statistics = {index: metric_statistic(p, metric, space) for index, p in aligned.items()}
    for index, statistic in statistics.items():
        (low, high), = bootstrap_ci(statistic, len(common), strata=strata, n_resamples=resamples, seed=seed).values()
        board.loc[index, [CI_LOW, CI_HIGH]] = low, high
    leader = board.index[0]
    if leader not in statistics or space.sweep.multi_objective:
        return board
    for index, statistic in statistics.items():
        if index == leader:
            board.loc[index, [SHARE, TIED]] = 1.0, True
            continue
        shares = share_at_least_as_good(statistic, statistics[leader], len(common), strata=strata,
                                        n_resamples=resamples, seed=seed,
                                        lower_is_better=(metric,) if mode == "min" else ())
        share = shares.get(metric, math.nan)
        board.loc[index, [SHARE, TIED]] = share, bool(share >= LEVEL)
    return board


def method_note(space: SearchSpace, board: pd.DataFrame, resamples: int = RESAMPLES, seed: int = SEED) -> str:
    """One sentence saying what the interval column and the mark mean, for the caption."""
    if CI_LOW not in board or board[CI_LOW].isna().all():
        return ""
    draw = "stratified by true class" if space.task in CLASS_TASKS else "over images"
    text = (f"95% CI: percentile bootstrap of `{space.sweep.primary_metric}` over the validation images ({draw}, "
            f"{resamples} resamples, seed {seed}) at the trial's best epoch.")
    if space.sweep.multi_objective:
        return text
    return (f"{text} `≈`: not distinguishable from rank 1 at the 5% level (in at least 5% of the same "
            f"resamples the trial scores at least as well as rank 1; paired bootstrap).")
