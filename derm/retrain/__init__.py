"""Retrain-best: the sweep's chosen configurations retrained on train+val, tested once.

- ``selection``: which trials, with which seeds and epochs;
- ``run``: ``retrain_best`` (retrain, then one evaluation of the untouched test split);
- ``ensemble``: per-image test predictions of one model or the mean of several;
- ``ensemble_selection``: members' weights by Caruana et al.'s (2004) greedy selection with replacement;
- ``summary``: metrics per member, mean and spread over seeds, bootstrap intervals;
- ``report``: the report files and figures; ``outputs``: metrics.json, model.pt, MLflow.

``python -m derm.retrain_best`` is the command.
"""

from derm.retrain.run import RetrainResult, load_test_split, retrain, retrain_best

__all__ = ["RetrainResult", "load_test_split", "retrain", "retrain_best"]
