"""What the driver does while Ray Tune runs the trials: the console and the MLflow run status.

Ray Tune callbacks (``ray.tune.Callback``), composed by ``derm.sweep.tuner``, plus the
channel trials use to tell the console something. This module imports Ray; the light
parts of the package (planning, the leaderboard) do not import it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray
from ray.tune import Callback

from derm.search_space.trial_outcomes import OUT_OF_MEMORY, OUT_OF_MEMORY_ERROR
from derm.tracking import find_trial_run


class TrialMessages:
    """Lines trials send to the sweep's console: skipped files, waiting for a cache, device notes.

    Ray runs trials in worker processes whose output the console does not show
    (``log_to_driver=False`` keeps Ray's own noise out); a small named Ray actor carries the
    lines worth a user's attention to the driver, which prints them between trial events.
    Only the actor's name is pickled, so the console callback Ray Tune restores on
    ``--resume`` finds the new session's actor.
    """

    NAME = "derm-trial-messages"

    def __init__(self, name: str = NAME):
        self.name = name
        self._actor = None

    @classmethod
    def start(cls, name: str = NAME) -> "TrialMessages":
        """Create the actor (in the driver, once per session)."""
        messages = cls(name)
        messages._actor = _Inbox.options(name=name, get_if_exists=True).remote()
        return messages

    def _inbox(self):
        if self._actor is None:
            self._actor = ray.get_actor(self.name)
        return self._actor

    def send(self, trial_id: str, message: str, kind: str = "log") -> None:
        """``kind`` "log": a line to print; "progress": where the trial is, for the heartbeat."""
        self._inbox().send.remote((trial_id, message, kind))

    def receive(self) -> list[tuple[str, str, str]]:
        try:
            return ray.get(self._inbox().take.remote(), timeout=10)
        except (ValueError, ray.exceptions.RayError):  # the actor is gone (shutdown)
            return []

    def __getstate__(self) -> dict:
        return {"name": self.name, "_actor": None}


@ray.remote(num_cpus=0)
class _Inbox:
    """The actor behind TrialMessages: lines in, taken out in arrival order."""

    def __init__(self):
        self.lines: list = []

    def send(self, line) -> None:
        self.lines.append(line)

    def take(self) -> list:
        lines, self.lines = self.lines, []
        return lines


class ChildRunStatus(Callback):
    """The final status of each trial's MLflow child run.

    Set here, in the driver, because only the driver sees every way a trial ends: a trial
    the scheduler cuts stops inside tune.report, and Ray may end its actor (or reuse it for
    the next trial) before the trial's own code runs again; a crashed worker runs nothing.
    """

    def __init__(self, tracking_uri: str, experiment: str, parent_run_id: str | None):
        self.tracking_uri, self.experiment, self.parent_run_id = tracking_uri, experiment, parent_run_id

    def on_trial_complete(self, iteration, trials, trial, **info):
        # A trial that did not fit in memory ends without an error, but trained nothing to keep.
        failed = (trial.last_result or {}).get(OUT_OF_MEMORY)
        self._terminate(trial.trial_id, "FAILED" if failed else "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._terminate(trial.trial_id, "FAILED")

    def _terminate(self, trial_id: str, status: str) -> None:
        from mlflow.tracking import MlflowClient

        run_id = find_trial_run(self.tracking_uri, self.experiment, trial_id, self.parent_run_id)
        if run_id is not None:
            MlflowClient(self.tracking_uri).set_terminated(run_id, status=status)


class SweepConsole(Callback):
    """One line per trial event, with the counts and the best so far, and the trials' messages.

    When nothing was printed for ``heartbeat_seconds`` (``DERM_HEARTBEAT_SECONDS``, default
    30), one line says the sweep is alive: its elapsed time, a rough upper bound of what is
    left from the epochs finished so far, and where each running trial is (checking data,
    building a decode cache, epoch and batch), so a slow trial is not mistaken for a hung one.
    """

    def __init__(self, metric: str, mode: str, max_epochs: int, messages: TrialMessages | None = None,
                 already_said: tuple[str, ...] = (), num_samples: int | None = None,
                 heartbeat_seconds: float | None = None):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.messages = messages
        # Every trial reads the same data: a skipped file is said once per sweep.
        self.said = set(already_said)
        self.best: tuple[float, str] | None = None
        self.counts = {"finished": 0, "stopped early": 0, "failed": 0}
        self.polled = 0.0
        self.num_samples = num_samples
        self.heartbeat_seconds = heartbeat_seconds if heartbeat_seconds is not None else float(
            os.environ.get("DERM_HEARTBEAT_SECONDS", "30"))
        self.started = self.last_said = time.monotonic()
        self.epochs_done = 0
        self.phases: dict[str, str] = {}

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.last_said = time.monotonic()

    def _better(self, value: float) -> bool:
        return self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])

    def on_step_end(self, iteration, trials, **info):
        if self.messages is not None and time.monotonic() - self.polled >= 1.0:
            self.polled = time.monotonic()
            self.print_messages()
        if time.monotonic() - self.last_said >= self.heartbeat_seconds:
            self.say(self.heartbeat([t for t in trials if t.status == "RUNNING"]))

    def heartbeat(self, running: list) -> str:
        """The alive line: elapsed, a rough bound of what is left, each running trial's phase."""
        elapsed = time.monotonic() - self.started
        line = f"... {_minutes(elapsed)} elapsed"
        if self.epochs_done and self.num_samples:
            left = self.num_samples * self.max_epochs - self.epochs_done
            line += f", at most ~{_minutes(elapsed / self.epochs_done * left)} left if every trial trains every epoch"
        where = "; ".join(f"trial {t.trial_id}: {self.phases.get(t.trial_id, 'starting')}" for t in running)
        return f"{line} | {where or 'no trial running'}"

    def print_messages(self) -> None:
        if self.messages is None:
            return
        for trial_id, message, kind in self.messages.receive():
            if kind == "progress":
                self.phases[trial_id] = message
            elif message.startswith("skipping "):
                if message not in self.said:
                    self.said.add(message)
                    self.say(f"data: {message}")
            else:
                if message.startswith("decode cache:"):  # building or waiting for a cache: the trial's phase
                    self.phases[trial_id] = message.removeprefix("decode cache: ")
                self.say(f"trial {trial_id}: {message}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.print_messages()
        value = result.get(self.metric)
        if value is not None and self._better(value):
            self.best = (value, trial.trial_id)
        self.epochs_done += 1
        self.phases[trial.trial_id] = f"epoch {result.get('epoch')} done"
        running = sum(1 for t in trials if t.status == "RUNNING")
        best = f"{self.best[0]:.4f} ({self.best[1]})" if self.best else "-"
        self.say(f"trial {trial.trial_id} epoch {result.get('epoch')}/{self.max_epochs} "
                 f"{self.metric} {value:.4f} | running {running}, "
                 + ", ".join(f"{k} {v}" for k, v in self.counts.items()) + f" | best {best}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        epochs = result.get("epoch", 0)
        if result.get(OUT_OF_MEMORY):
            self.counts["failed"] += 1
            self.say(f"trial {trial.trial_id} failed: {result.get(OUT_OF_MEMORY_ERROR) or 'out of memory'}")
            return
        kind = "finished" if epochs >= self.max_epochs else "stopped early"
        self.counts[kind] += 1
        self.say(f"trial {trial.trial_id} {kind} after {epochs} epochs")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.print_messages()
        self.counts["failed"] += 1
        # trial.path is the trial's folder in the sweep's storage (the sweep folder), where
        # Ray copies error.txt; local_path is a staging folder under /tmp/ray.
        self.say(f"trial {trial.trial_id} failed: {error_summary(trial)} (traceback: {trial.path}/error.txt)")

    def on_experiment_end(self, trials, **info):
        self.print_messages()


def _minutes(seconds: float) -> str:
    """'1:05:09', '4:07' or '0:12' (h:mm:ss or m:ss)."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def error_summary(trial) -> str:
    """The last line of a failed trial's error (the exception), from the staging copy Ray just wrote."""
    try:
        lines = [line for line in Path(trial.error_file).read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return "see its error file"
    return lines[-1][:300] if lines else "see its error file"
