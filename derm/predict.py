"""``python -m derm.predict CHECKPOINT IMAGES_DIR --out DIR``: ISIC 2018 submission files from a model.

    python -m derm.predict runs/demo/checkpoints/best.pt data/test_images --out predictions
    python -m derm.predict sweeps/unet/2026-11-23_10-00-00/trial_ab12/checkpoint_000003/latest.pt \\
        images --out predictions --tta --batch-size 16 --device cuda --no-overlays --quiet
    python -m derm.predict results/unet/cv5/model.pt images --out predictions --tta multicrop:5

The checkpoint may be an ensemble's ``model.pt`` (retrain-best's fold or top-K ensemble):
its members' probabilities are averaged with their weights. ``--tta`` alone averages over
flips; ``--tta dihedral`` over the 8 rotations and mirror images; ``--tta multicrop:N``
over N crops of the image decoded at 1.25x the model size (``derm.tta``).

Writes the files of ``derm.submission`` (masks at each image's original size,
``diagnosis.csv``, ``overlays/``), with a progress bar on stderr at a terminal (none with
``--quiet``). An unreadable image is reported by name and skipped; the exit status is 0
when every image was predicted, 1 when some were skipped or the checkpoint or images
cannot be used, 2 for a usage mistake (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import sys

from derm._cli import RUN_FAILURE, run_command
from derm.inference import DEFAULT_BATCH_SIZE
from derm.progress import set_quiet, write
from derm.tta import TTA


def tta_mode(spec: str) -> str:
    """--tta's value checked by `derm.tta.TTA.parse`, in its one spelling (multicrop -> multicrop:5)."""
    try:
        return str(TTA.parse(spec))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.predict", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a derm checkpoint: latest.pt, best.pt, a sweep trial's latest.pt "
                                               "or retrain-best's model.pt (one model or an ensemble)")
    parser.add_argument("images_dir", help="folder of JPEG/PNG images of any size (other files are ignored)")
    parser.add_argument("--out", required=True, help="folder for the masks, diagnosis.csv and overlays/")
    parser.add_argument("--tta", nargs="?", const="flips", default="none", type=tta_mode, metavar="MODE",
                        help="test-time augmentation: flips (the default for --tta alone: as given, horizontal, "
                             "vertical and double flips, 4x the compute), dihedral (the 8 rotations and mirror "
                             "images, 8x), or multicrop:N (N crops of the image decoded at 1.25x the model size: "
                             "5 = centre and corners, or a square grid 4, 9, 16 ...; multicrop alone is 5)")
    parser.add_argument("--calibrated", action="store_true",
                        help="apply the temperature retrain-best --folds fitted on out-of-fold diagnoses to the "
                             "class probabilities (default: the model's own; the predicted class is the same)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-overlays", action="store_true", help="do not draw overlays/<id>.jpg")
    parser.add_argument("--metadata", metavar="FILE",
                        help="for a model trained with model.metadata: CSV of image_id (or image), age, sex, "
                             "localization per image (default: IMAGES_DIR/metadata.csv when it exists)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; results and skipped files still print")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> int:
    from derm.inference import Predictor
    from derm.submission import predict_folder

    set_quiet(args.quiet)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, tta=args.tta,
                                          calibrated=args.calibrated)
    result = predict_folder(predictor, args.images_dir, args.out, overlays=not args.no_overlays,
                            batch_size=args.batch_size, log=lambda line: write(line, sys.stderr),
                            metadata_csv=args.metadata)
    print(f"predicted {len(result.predicted)} images into {result.out_dir}")
    if result.skipped:
        names = ", ".join(path.name for path, _ in result.skipped)
        print(f"{len(result.skipped)} images could not be read and were skipped: {names}", file=sys.stderr)
        return RUN_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
