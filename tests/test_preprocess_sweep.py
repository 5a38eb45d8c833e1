"""Pre-processing searched in a sweep reaches each trial's pixels, and predict prepares the same pixels."""

import json
import subprocess
import sys

import numpy as np
import yaml

from conftest import free_port
from derm.data.cache import open_cache
from derm.data.formats import load_table
from derm.inference import Predictor, load_image
from spaces import write_space


def test_searched_colour_constancy_with_pad_reaches_the_trials_and_predict_sees_the_same_pixels(ham_demo, tmp_path):
    space = write_space(tmp_path, ham_demo, "preprocessed", encoders=("resnet18",), epochs=1, max_concurrent=1)
    raw = yaml.safe_load(space.read_text())
    raw["data"].update({"resize": "pad", "cache_dir": str(tmp_path / "cache"),
                        "color_constancy": {"choice": ["none", "shades_of_gray"]}})
    space.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "derm.sweep", str(space), "--out", str(tmp_path / "sweeps"),
                           "--dashboard-port", str(free_port())], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr

    # Each trial decoded its images with its own options: one cache per (split, option).
    caches = [open_cache(index.parent) for index in (tmp_path / "cache").glob("*/index.json")]
    options = {(c.preprocessing.resize, c.preprocessing.color_constancy) for c in caches}
    assert options == {("pad", "none"), ("pad", "shades_of_gray")}

    table = load_table(ham_demo).set_index("image_id")
    (sweep_dir,) = (tmp_path / "sweeps" / "preprocessed").iterdir()
    checkpoints = sorted(sweep_dir.glob("trial_*/checkpoint_*/latest.pt"))
    assert len({path.parent.parent for path in checkpoints}) == 2
    seen = set()
    for checkpoint in checkpoints:
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
        method = predictor.preprocessing.color_constancy
        seen.add(method)
        cache = next(c for c in caches if c.preprocessing == predictor.preprocessing and c.image_ids)
        image_id = cache.image_ids[0]
        prepared = load_image(table.loc[image_id, "image_path"], predictor.image_size, predictor.preprocessing)
        np.testing.assert_array_equal(prepared.pixels, np.asarray(cache.images[cache.row_of[image_id]]))
    assert seen == {"none", "shades_of_gray"}
    # And the two options gave different pixels: the option changed what the model saw.
    rows = {method: {} for method in ("none", "shades_of_gray")}
    for cache in caches:
        for image_id in cache.image_ids:
            rows[cache.preprocessing.color_constancy][image_id] = np.asarray(cache.images[cache.row_of[image_id]])
    shared = sorted(set(rows["none"]) & set(rows["shades_of_gray"]))[0]
    assert np.abs(rows["none"][shared].astype(int) - rows["shades_of_gray"][shared].astype(int)).max() > 0
    assert json.loads((sweep_dir / "sweep.json").read_text())
