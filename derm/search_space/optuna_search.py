"""Ray Tune's OptunaSearch told how each trial really ended (this module imports Ray and Optuna).

Ray 2.60's ``OptunaSearch.on_trial_complete`` tells Optuna ``COMPLETE`` with the last
reported score whenever a trial reported one, also for a trial ASHA stopped after one
epoch, so TPE models a 1-epoch score as a finished run's. `StoppedAsPrunedOptunaSearch`
tells Optuna what `derm.search_space.searcher.trial_end_state` says. Light modules do not
import this one; ``build_searcher`` does, when a sweep starts.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState
from ray.air.constants import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from derm.search_space.trial_outcomes import OUT_OF_MEMORY, trial_end_state

logger = logging.getLogger(__name__)


class StoppedAsPrunedOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch that tells Optuna how each trial ended (`trial_end_state`).

    A trial ASHA stopped before ``max_epochs`` is ``PRUNED`` with its per-epoch scores as
    intermediate values (Optuna takes the last as its value); the result ASHA stopped it
    on is added first, since Ray hands a stopping result to the scheduler but not to
    ``on_trial_result``. A trial that did not fit in memory is ``PRUNED`` with only the
    epochs it trained (none: TPE ranks it below every other trial). ``stopped_as_pruned=
    False`` keeps Ray's COMPLETE for stopped trials. Several metrics (a list) get Ray's
    behaviour unchanged. The extra state is two plain attributes, so Ray's ``save`` /
    ``restore`` (a pickle of ``__dict__``) keep it.
    """

    def __init__(self, *args, max_epochs: int, stopped_as_pruned: bool = True, **kwargs):
        self._max_epochs = max_epochs
        self._stopped_as_pruned = stopped_as_pruned
        super().__init__(*args, **kwargs)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study the searcher asks and tells."""
        return self._ot_study

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get(OUT_OF_MEMORY):
            return  # a marker, not a score: the trial's intermediate values stay its epochs'
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials or not (result or error):
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        state = trial_end_state(result, error, metric=self.metric, max_epochs=self._max_epochs,
                                stopped_as_pruned=self._stopped_as_pruned)
        ot_trial = self._ot_trials[trial_id]
        try:
            if state == "COMPLETE":
                self._ot_study.tell(ot_trial, result[self.metric], state=TrialState.COMPLETE)
            else:
                if state == "PRUNED" and not result.get(OUT_OF_MEMORY):
                    self._report_last(ot_trial, result)
                self._ot_study.tell(ot_trial, state=TrialState[state])
        except Exception as exc:  # noqa: BLE001  as Ray does: e.g. a NaN score, which Optuna refuses
            logger.warning(exc)
        self._completed_trials.add(trial_id)

    def _report_last(self, ot_trial, result: dict) -> None:
        """Report the last result as an intermediate value unless its step already is."""
        value, step = result.get(self.metric), result.get(TRAINING_ITERATION)
        if value is None or step is None:
            return
        (frozen,) = (t for t in self._ot_study.get_trials(deepcopy=False) if t.number == ot_trial.number)
        if int(step) not in frozen.intermediate_values:
            ot_trial.report(value, int(step))
