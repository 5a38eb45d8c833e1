"""``python -m derm.predict CHECKPOINT IMAGES_DIR --out DIR``: ISIC 2018 submission files from a model.

    python -m derm.predict runs/demo/checkpoints/best.pt data/test_images --out predictions
    python -m derm.predict sweeps/unet/2026-11-23_10-00-00/trial_ab12/checkpoint_000003/latest.pt \\
        images --out predictions --tta --batch-size 16 --device cuda --no-overlays --quiet

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.predict", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a derm checkpoint: latest.pt, best.pt or a sweep trial's latest.pt")
    parser.add_argument("images_dir", help="folder of JPEG/PNG images of any size (other files are ignored)")
    parser.add_argument("--out", required=True, help="folder for the masks, diagnosis.csv and overlays/")
    parser.add_argument("--tta", action="store_true",
                        help="average over horizontal, vertical and double flips (4x the compute)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-overlays", action="store_true", help="do not draw overlays/<id>.jpg")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; results and skipped files still print")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> int:
    from derm.inference import Predictor
    from derm.submission import predict_folder

    set_quiet(args.quiet)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, tta=args.tta)
    result = predict_folder(predictor, args.images_dir, args.out, overlays=not args.no_overlays,
                            batch_size=args.batch_size, log=lambda line: write(line, sys.stderr))
    print(f"predicted {len(result.predicted)} images into {result.out_dir}")
    if result.skipped:
        names = ", ".join(path.name for path, _ in result.skipped)
        print(f"{len(result.skipped)} images could not be read and were skipped: {names}", file=sys.stderr)
        return RUN_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
