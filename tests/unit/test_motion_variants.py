"""tools/motion_variants.py: its synthetic motion patterns move as labelled, and a tiny screen runs
end to end (random probe, a few pretraining steps, probes of the target and online encoders, JSON)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("motion_variants", ROOT / "tools" / "motion_variants.py")
mv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mv)


@pytest.mark.parametrize("label", [0, 1, 2, 3])
def test_dots_translate_by_speed_in_label_direction(label):
    args = mv.parse_args(["--pattern", "dots", "--speed", "4"])
    x = mv.dots_frames(args, label, 6, 64, np.random.default_rng(label))
    dy, dx = mv.VEL[label]
    for t in range(5):
        np.testing.assert_array_equal(np.roll(x[t], (4 * dy, 4 * dx), (0, 1)), x[t + 1])
    # a single frame carries no direction: every direction's first frame has the same dot statistics
    assert abs((x[0, ..., 0] > 128).mean() - 0.08) < 0.03


def test_square_moves_over_fresh_noise_each_frame():
    args = mv.parse_args(["--pattern", "square", "--noise-bg", "200", "--speed", "2"])
    x = mv.square_frames(args, 0, 4, 64, np.random.default_rng(0))
    assert not np.array_equal(x[0], x[1])
    bright = (x == 230).all(-1)  # the checker's light cells (noise stays below 200)
    cols = [np.nonzero(bright[t].any(0))[0] for t in range(4)]
    shift = [(int(np.median(cols[t + 1] - cols[t])) % 64) for t in range(3)]
    assert shift == [2, 2, 2]


def test_tiny_screen_end_to_end(tmp_path):
    out = tmp_path / "screen.json"
    rc = mv.main(["--pattern", "square", "--steps", "2", "--eval-every", "2", "--few", "2", "--batch", "4",
                  "--videos", "16", "8", "--probe-online", "--threads", "1", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [(e["encoder"], e["step"]) for e in res["evals"]] == [("random", 0), ("pretrained", 2), ("online", 2)]
    for e in res["evals"]:
        assert len(e["full"]) == 2 and len(e["few"]) == 2
        assert all(0.0 <= a <= 100.0 for a in e["full"] + e["few"])
