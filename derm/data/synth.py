"""``python -m derm.data.synth OUT``: write a procedurally drawn demo dataset in a real layout.

    python -m derm.data.synth data/demo --layout ham10000 --n 300 --size 64x64 --seed 0

The generator is ``derm.data.synthetic`` (``write_synthetic_dataset``). While it writes, a
progress bar shows on stderr at a terminal (none with ``--quiet``).
"""

from __future__ import annotations

import argparse
import sys

from derm._cli import run_command
from derm.data.synthetic import LAYOUTS, write_synthetic_dataset
from derm.errors import ConfigError
from derm.progress import set_quiet


def parse_size(text: str) -> tuple[int, int]:
    """'128x96' -> (128, 96); '64' -> (64, 64).

    >>> parse_size("128x96"), parse_size("64")
    ((128, 96), (64, 64))
    """
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"--size {text!r} is not WIDTHxHEIGHT, e.g. 128x128")
    width, height = int(parts[0]), int(parts[-1])
    return width, height


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m derm.data.synth", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="new (or empty) folder to write the dataset into")
    parser.add_argument("--layout", default="ham10000", choices=LAYOUTS)
    parser.add_argument("--n", type=int, default=500, help="number of images (default 500)")
    parser.add_argument("--size", default="128x128", help="image size WIDTHxHEIGHT (default 128x128)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--colour-cast", type=float, default=0.0, metavar="STRENGTH",
                        help="per-image random illuminant: channel gains exp(N(0, STRENGTH)), e.g. 0.15 "
                             "(default 0: none), for data.color_constancy to undo")
    parser.add_argument("--metadata-signal", type=float, default=0.0, metavar="STRENGTH",
                        help="share (0-1) of lesions whose age, sex and site follow their diagnosis (melanoma "
                             "older and on the back, nevi younger, BCC on the face), for model.metadata to use "
                             "(default 0: HAM10000's overall frequencies; ham10000 layout only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; the closing line still prints")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write a synthetic dataset; returns the exit code."""
    args = parse_args(argv)
    return run_command(lambda: command(args))


def command(args: argparse.Namespace) -> None:
    set_quiet(args.quiet)
    root = write_synthetic_dataset(args.out, args.layout, args.n, parse_size(args.size), args.seed,
                                   colour_cast=args.colour_cast, metadata_signal=args.metadata_signal)
    print(f"wrote {args.n} {args.layout} images to {root}")


if __name__ == "__main__":
    sys.exit(main())
