"""Tiny search spaces for the tests that run sweeps: one builder, the differences as arguments."""

from pathlib import Path

import yaml

FAILING_ENCODER = "tu-not_a_timm_model"  # timm has no such model: its trial fails when the model is built


def write_space(folder: Path, data_root, name: str, *, task: str = "multitask",
                encoders=("resnet18", "mobilenet_v2"), epochs: int = 2, **sweep) -> Path:
    """A search space over Unet encoders (a grid, FIFO, 1-CPU trials) at 32 px, written to ``folder/name.yaml``.

    ``sweep`` adds or replaces ``sweep:`` settings (e.g. ``max_concurrent=1``, ``scheduler="asha"``).
    """
    space = {
        "name": name,
        "task": task,
        "data": {"root": str(data_root), "image_size": 32, "augment": "none"},
        "model": {"arch": "Unet", "encoder": {"choice": list(encoders)} if len(encoders) > 1 else encoders[0],
                  "encoder_weights": None},
        "optim": {"lr": 1e-3},
        "train": {"epochs": epochs, "batch_size": 16},
        "sweep": {"search": "grid", "scheduler": "fifo", "resources": {"cpu": 1, "gpu": 0}, **sweep},
    }
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path
