"""One record type for everything wrong with a dataset's files.

`derm.data.formats.load_table` records file-level problems (a metadata row
without its image, an image without its mask, an unknown label) and
`derm.data.decoding` adds decode-level ones (a truncated JPEG, a mask of the
wrong size). Both use `Problem`, so a report can list them together.
"""

from dataclasses import dataclass

SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Problem:
    """Something wrong with one file of a dataset.

    `image_id` is the ISIC id the file belongs to, or None when the file names
    no image. `severity` is "error" (the image cannot be used as is) or
    "warning" (worth knowing, nothing is lost).

    >>> str(Problem("ISIC_0024306", "/data/images/ISIC_0024306.jpg", "missing mask"))
    '/data/images/ISIC_0024306.jpg: missing mask'
    """

    image_id: str | None
    path: str
    problem: str
    severity: str = "error"

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"
