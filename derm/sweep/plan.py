"""The sweep folder and everything the driver decides before Ray starts.

``plan_sweep`` makes ``sweeps/<name>/<timestamp>/`` with the resolved search space, the
split every trial and the later retrain use, the MLflow parent run and ``sweep.json``
(what ``--resume``, ``derm.leaderboard`` and ``derm.retrain_best`` reopen with
``load_plan``). ``demo_dataset`` writes the embedded synthetic data for ``--demo``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from derm.errors import ConfigError
from derm.search_space import SearchSpace, apply_demo, build_search_space

SWEEP_FILE = "sweep.json"
SPACE_FILE = "search_space.yaml"
DEMO_LAYOUTS = {"attributes": "isic2018-task2"}
DEMO_IMAGES = 400


@dataclass
class SweepPlan:
    """Everything the driver decided before Ray starts; saved as sweep.json for --resume."""

    sweep_dir: Path
    space: SearchSpace
    tracking_uri: str
    parent_run_id: str | None
    demo_root: str | None
    storage: str | None = None
    reported: tuple[str, ...] = ()  # data problems the driver printed (trials need not repeat them)

    @property
    def experiment_path(self) -> str:
        """Where Ray Tune keeps the experiment state and trial checkpoints: the sweep folder,
        or ``<storage URI>/<name>/<timestamp>`` when ``--storage`` is a URI (s3://, gs://, file://)."""
        if self.storage and "://" in self.storage:
            return f"{self.storage.rstrip('/')}/{self.space.name}/{self.sweep_dir.name}"
        return str(self.sweep_dir)


def demo_dataset(task: str, cache_root: Path | None = None) -> tuple[str, str]:
    """The embedded synthetic dataset for --demo, generated on first use; (root, layout)."""
    from derm.data.cache import default_cache_dir
    from derm.data.synthetic import write_synthetic_dataset

    layout = DEMO_LAYOUTS.get(task, "ham10000")
    root = (cache_root or default_cache_dir()) / "demo-data" / f"{layout}-{DEMO_IMAGES}-64px"
    if not (root / ".complete").exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        write_synthetic_dataset(root, layout, n=DEMO_IMAGES, size=(64, 64), seed=0)
        (root / ".complete").write_text("")
    return str(root), layout


def check_data_exists(space: SearchSpace) -> None:
    root = Path(space.base_config.data.root)
    if not root.exists():
        raise ConfigError(
            f"{space.source}: data.root {root} does not exist; expected the {space.base_config.data.layout} "
            f"layout there (see README, Data). Point data.root=... at your copy, or try --demo "
            f"for the embedded synthetic dataset")


def plan_sweep(space: SearchSpace, out_root: Path, storage: str | None, mlflow_uri: str | None,
               demo_root: str | None, warm_start: list[dict] | None = None) -> SweepPlan:
    """Make the sweep folder, its split and its MLflow parent run (before Ray starts)."""
    from derm.config import absolute_tracking_uri
    from derm.data.formats import load_table
    from derm.data.loaders import load_split
    from derm.tracking import RunLogger, default_tracking_uri

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    if storage and "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())  # trials run in folders of their own
    base = Path(storage) if storage and "://" not in storage else out_root
    sweep_dir = (base / space.name / stamp).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=False)
    cfg = space.base_config
    table = load_table(cfg.data.root, cfg.data.layout)
    reported = []
    for problem in table.attrs.get("problems", []):
        if problem.severity == "error":
            reported.append(f"skipping {problem.path}: {problem.problem}")
            print(f"data: {reported[-1]}")
        else:
            print(f"data: {problem} (warning)")
    # Made over every image the dataset lists: trials drop bad files from their parts, so
    # the split stays the same whichever files turn out to be broken.
    split = load_split(cfg, table, sweep_dir)
    (sweep_dir / SPACE_FILE).write_text(yaml.safe_dump(space.file_values, sort_keys=False))
    tracking_uri = absolute_tracking_uri(mlflow_uri) if mlflow_uri else default_tracking_uri(sweep_dir)
    parent = RunLogger(tracking_uri, f"derm-sweep-{space.name}", stamp,
                       tags={"derm.sweep_dir": str(sweep_dir)})
    parent.log_params({"sweep": space.sweep.model_dump(mode="json"), "searched": list(space.searched_keys)})
    plan = SweepPlan(sweep_dir, space, tracking_uri, parent.run_id, demo_root, storage, tuple(reported))
    (sweep_dir / SWEEP_FILE).write_text(json.dumps({
        "source": space.source, "overrides": list(space.overrides), "demo_root": demo_root,
        "tracking_uri": tracking_uri, "parent_run_id": parent.run_id, "storage": storage,
        "working_dir": space.base_dir, "warm_start": warm_start or [],
    }, indent=2))
    print(f"split: {', '.join(f'{n} {(split == n).sum()}' for n in ('train', 'val', 'test'))} images "
          f"({sweep_dir / 'split.csv'}; the test split is not read by the sweep)")
    return plan


def check_sweep_folder(sweep_dir: str | Path) -> Path:
    """``sweep_dir`` as a Path when it holds a sweep (its sweep.json); ConfigError naming it otherwise."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP_FILE).is_file():
        raise ConfigError(f"{sweep_dir} is not a derm sweep folder (no {SWEEP_FILE}); give a folder "
                          f"sweeps/<name>/<timestamp> written by python -m derm.sweep")
    return sweep_dir


def load_plan(sweep_dir: str | Path) -> SweepPlan:
    """Rebuild a sweep's plan from its folder (for --resume, the leaderboard and retrain-best)."""
    sweep_dir = check_sweep_folder(sweep_dir)
    info = json.loads((sweep_dir / SWEEP_FILE).read_text())
    file_values = yaml.safe_load((sweep_dir / SPACE_FILE).read_text())
    # Relative paths mean what they meant where the sweep was started, not where it resumes.
    space = build_search_space(file_values, info["source"], tuple(info["overrides"]),
                               base_dir=info.get("working_dir") or str(Path.cwd()))
    if info["demo_root"]:
        space = apply_demo(space, info["demo_root"], DEMO_LAYOUTS.get(space.task, "ham10000"))
    return SweepPlan(sweep_dir.resolve(), space, info["tracking_uri"], info["parent_run_id"], info["demo_root"],
                     info.get("storage"))
