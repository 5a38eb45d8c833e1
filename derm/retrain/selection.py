"""Which sweep trials retrain-best retrains: by leaderboard rank, with their configs and epochs.

A ``Candidate`` is a ranked trial (completed or stopped early) with its best epoch and its
resolved config; a ``Member`` is one model to retrain: a candidate, a seed and a number of
epochs. ``member_config`` is the config that member trains with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from derm.config import RunConfig
from derm.errors import ConfigError
from derm.search_space import config_key, resolve_trial_config
from derm.sweep.board import HALVED, load_trials, rank_sweep_trials
from derm.sweep.trainable import halved_batch

ELIGIBLE = ("completed", "stopped early")


@dataclass
class Candidate:
    """A sweep trial chosen for retraining: its rank, best epoch and resolved config."""

    rank: int
    trial_id: str
    best_epoch: int
    sweep_value: float
    config: RunConfig


@dataclass
class Member:
    """One model to retrain: a candidate with a seed and a number of epochs."""

    candidate: Candidate
    seed: int
    epochs: int
    fold: int | None = None  # cross-validation: the fold this model holds out

    @property
    def label(self) -> str:
        if self.fold is not None:
            return f"rank{self.candidate.rank}-fold{self.fold}"
        return f"rank{self.candidate.rank}-seed{self.seed}"


def trial_params(row: pd.Series, searched_keys: Sequence[str]) -> dict[str, Any]:
    """A leaderboard row's trial parameters: its ``config.*`` cells for the searched keys.

    Cells empty for this trial (a conditional parameter another trial had) are left out;
    NumPy scalars become Python values for the config's validation.
    """
    params = {}
    for column, value in row.items():
        name = str(column).removeprefix("config.")
        if not str(column).startswith("config.") or config_key(name) not in searched_keys:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        params[name] = value.item() if isinstance(value, np.generic) else value
    return params


def choose_trials(plan, ranks: Sequence[int]) -> list[Candidate]:
    """The sweep's trials at ``ranks`` (completed or stopped early only, at half the batch when
    they ran out of memory at theirs), configs resolved."""
    space = plan.space
    board = rank_sweep_trials(load_trials(plan.experiment_path), space.sweep, space.max_epochs)
    if board.empty:
        eligible = board
    else:
        eligible = board[board["status"].str.removesuffix(HALVED).isin(ELIGIBLE) & board["epoch"].notna()]
    candidates = []
    for rank in ranks:
        rows = eligible[eligible["rank"] == rank] if not eligible.empty else eligible
        if rows.empty:
            ranks_text = f"ranks 1-{len(eligible)}" if len(eligible) else "none"
            raise ConfigError(f"{plan.sweep_dir}: rank {rank} does not exist; {len(eligible)} of {len(board)} "
                            f"trials completed or stopped early ({ranks_text})")
        row = rows.iloc[0]
        cfg = resolve_trial_config(space, trial_params(row, space.searched_keys))
        if str(row["status"]).endswith(HALVED):
            # The trial ran out of memory at its batch and trained at half of it: so does its retrain.
            cfg = halved_batch(cfg)
        candidates.append(Candidate(rank, str(row["trial_id"]), int(row["epoch"]),
                                    float(row[space.sweep.primary_metric]), cfg))
    return candidates


def plan_members(candidates: Sequence[Candidate], seeds: int, epochs: int | None) -> list[Member]:
    """Each candidate with ``seeds`` seeds (train.seed + i), for its best epoch or ``epochs``."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    sizes = {c.config.data.image_size for c in candidates}
    if len(sizes) > 1:
        raise ConfigError(f"an ensemble averages masks pixel by pixel, so its members need one data.image_size; "
                          f"ranks {', '.join(str(c.rank) for c in candidates)} use {sorted(sizes)}")
    return [Member(c, c.config.train.seed + i, epochs or c.best_epoch) for c in candidates for i in range(seeds)]


def member_config(member: Member, runs_dir: Path) -> RunConfig:
    cfg = member.candidate.config.model_copy(deep=True)
    cfg.name, cfg.out_dir = member.label, str(runs_dir)
    cfg.train.seed, cfg.train.epochs = member.seed, member.epochs
    # A trial whose best epoch came early may have had a warm-up as long as that: shorten
    # the warm-up (the caller says so) rather than refuse to retrain.
    cfg.optim.warmup_epochs = min(cfg.optim.warmup_epochs, member.epochs - 1)
    return cfg
