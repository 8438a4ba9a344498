"""tools/motion_variants.py: its synthetic motion patterns move as labelled (the screen end to end:
integration/test_motion_variants_screen.py)."""
import numpy as np
import pytest

from helpers import load_tool

mv = load_tool("motion_variants")


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
