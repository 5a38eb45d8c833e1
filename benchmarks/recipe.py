"""Question 7: do the ISIC winners' options do on derm's demo data what they are for?

Writes a synthetic HAM10000 (``derm.data.synth``) whose images carry per-image colour casts
(``--colour-cast``) and whose patients' age, sex and lesion site follow the diagnosis for
part of the lesions (``--metadata-signal``), then trains the same small multitask model
(Unet/ResNet-18 from scratch, 64 px) with one option changed at a time, each with the same
seeds, and reports the validation figures side by side:

    baseline                  data.color_constancy none, model.metadata false
    shades_of_gray            data.color_constancy shades_of_gray (p = 6)
    metadata                  model.metadata true

and, on the baseline model, lesion post-processing: threshold and clean-up chosen on one
half of the validation images (`derm.postprocess.choose_lesion_postprocess`) and scored on
the other half against derm's default (> 0.5, no clean-up), so the choice is not scored on
the images it was made on.

    python benchmarks/recipe.py                  # 800 images, 8 epochs, seeds 0 1: ~25 min on 2 cores
    python benchmarks/recipe.py --quick          # 300 images, 3 epochs, seed 0: a few minutes

One seed is one draw; with a few hundred validation images differences of a few points of
balanced accuracy are within the noise (the leaderboard's intervals say how much).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import machine_line  # noqa: E402

ARMS = {
    "baseline": {},
    "shades_of_gray": {"data": {"color_constancy": "shades_of_gray"}},
    "metadata": {"model": {"metadata": True}},
}


def base_config(root: Path, cache: Path, runs: Path, epochs: int, seed: int) -> dict:
    return {
        "name": "recipe", "task": "multitask", "out_dir": str(runs),
        "data": {"root": str(root), "image_size": 64, "cache_dir": str(cache), "augment": "light"},
        "model": {"arch": "Unet", "encoder": "resnet18", "encoder_weights": None},
        "optim": {"name": "adamw", "lr": 1e-3, "scheduler": "cosine"},
        "train": {"epochs": epochs, "batch_size": 16, "seed": seed, "device": "cpu"},
        "mlflow": {"enabled": False},
    }


def merged(base: dict, change: dict) -> dict:
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in change.items():
        out[section] = {**out.get(section, {}), **values}
    return out


def train_arm(raw: dict, run_dir: Path):
    from derm.config import config_from_dict
    from derm.fit_callbacks import FitCallbacks
    from derm.training import fit

    cfg = config_from_dict(raw)
    return cfg, fit(cfg, run_dir, callbacks=FitCallbacks())


def postprocess_halves(cfg, checkpoint: Path, seed: int) -> dict[str, float]:
    """Thresholded Jaccard on half B of the validation images: default against the choice made on half A."""
    import torch

    from derm.data.loaders import prepare_data
    from derm.inference import load_model
    from derm.postprocess import choose_lesion_postprocess
    from derm.retrain.validation_choices import collect_masks

    device = torch.device("cpu")
    model = load_model(checkpoint, device)[0]
    data = prepare_data(cfg, train_on=("train",), evaluate_on=("val",), device=device, log=lambda line: None)
    masks = collect_masks(model, data.loaders["val"], device, limit=10**6)
    maps = [p[0].astype(np.float32) for p in masks.probabilities]
    truth = [t[0] for t in masks.truth]
    order = np.random.default_rng(seed).permutation(len(maps))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2:]
    chosen, _ = choose_lesion_postprocess([maps[i] for i in half_a], [truth[i] for i in half_a])
    _, table = choose_lesion_postprocess([maps[i] for i in half_b], [truth[i] for i in half_b],
                                         thresholds=sorted({0.5, chosen.threshold}))
    score = table.set_index(["threshold", "mode"])["isic_task1_jaccard"]
    return {"default": float(score[(0.5, "none")]), "chosen": float(score[(chosen.threshold, chosen.mode)]),
            "choice": chosen.describe(), "images": len(half_b)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--colour-cast", type=float, default=0.25)
    parser.add_argument("--metadata-signal", type=float, default=0.6)
    parser.add_argument("--quick", action="store_true", help="300 images, 3 epochs, seed 0")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.epochs, args.seeds = 300, 3, [0]

    from derm.data.synthetic import write_synthetic_dataset

    print(machine_line())
    print(f"data: {args.n} synthetic HAM10000 images at 96x96, colour cast {args.colour_cast}, metadata signal "
          f"{args.metadata_signal}; Unet/ResNet-18 from scratch at 64 px, {args.epochs} epochs, seeds {args.seeds}")
    with tempfile.TemporaryDirectory(prefix="derm-bench-recipe-") as folder:
        folder = Path(folder)
        root = write_synthetic_dataset(folder / "HAM10000", n=args.n, size=(96, 96), seed=0,
                                       colour_cast=args.colour_cast, metadata_signal=args.metadata_signal)
        rows, postprocessing = [], []
        for seed in args.seeds:
            base = base_config(root, folder / "cache", folder / "runs", args.epochs, seed)
            for arm, change in ARMS.items():
                cfg, result = train_arm(merged(base, change), folder / "runs" / f"{arm}-seed{seed}")
                best = result.best_metrics
                rows.append({"arm": arm, "seed": seed, "score": result.best_score, "epoch": result.best_epoch,
                             "balanced_accuracy": best["balanced_accuracy"],
                             "isic_task1_jaccard": best["isic_task1_jaccard"]})
                print(f"{arm:15s} seed {seed}: score {result.best_score:.4f} (epoch {result.best_epoch}), "
                      f"balanced accuracy {best['balanced_accuracy']:.4f}, "
                      f"thresholded Jaccard {best['isic_task1_jaccard']:.4f}", flush=True)
                if arm == "baseline":
                    figures = postprocess_halves(cfg, result.best_checkpoint, seed)
                    postprocessing.append(figures)
                    print(f"  post-processing on {figures['images']} held-out validation images: thresholded "
                          f"Jaccard {figures['default']:.4f} at > 0.5, {figures['chosen']:.4f} with "
                          f"{figures['choice']} (chosen on the other half)", flush=True)
        print("\n| option | score | balanced accuracy | thresholded Jaccard |\n|---|---|---|---|")
        for arm in ARMS:
            mine = [r for r in rows if r["arm"] == arm]
            print(f"| {arm} | " + " | ".join(f"{statistics.mean(r[k] for r in mine):.4f}"
                                           for k in ("score", "balanced_accuracy", "isic_task1_jaccard")) + " |")
        default = statistics.mean(p["default"] for p in postprocessing)
        chosen = statistics.mean(p["chosen"] for p in postprocessing)
        print(f"| baseline, post-processing chosen on half of val (other half) | | | {chosen:.4f} (vs {default:.4f}) |")


if __name__ == "__main__":
    main()
