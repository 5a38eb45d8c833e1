"""What retrain-best shows while it works: fit's log lines and bars, and a bar over prediction batches."""

from __future__ import annotations

from collections.abc import Callable

from derm.fit_callbacks import LogOnly
from derm.progress import EpochBar, progress


class RetrainCallbacks(LogOnly):
    """fit's log lines to ``write`` and its steps as the bar ``derm.train`` draws (`derm.progress.EpochBar`)."""

    def __init__(self, write: Callable[[str], None]):
        super().__init__(write)
        self.bar = EpochBar()

    def on_step(self, epoch: int, step: int, steps: int, running_loss: float) -> None:
        self.bar.on_step(epoch, step, steps, running_loss)


class LoaderWithBar:
    """A loader iterated with a progress bar by batches; ``dataset`` stays readable (predict_split reads it)."""

    def __init__(self, loader, desc: str):
        self.loader, self.dataset, self.desc = loader, loader.dataset, desc

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with progress(self.loader, total=len(self.loader), desc=self.desc, unit="batch") as batches:
            yield from batches
