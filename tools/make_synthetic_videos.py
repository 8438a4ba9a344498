#!/usr/bin/env python
"""Write a synthetic video set: moving squares labelled by direction of motion (`--pattern shapes`,
`noisy_square`), or flat frames whose grey level encodes the frame number (`frame_index`).

    python tools/make_synthetic_videos.py OUT_DIR [--num-videos 32] [--frames 16] [--size 64]
                                          [--codecs h264 vp9] [--val-fraction 0.25] [--seed 0]
                                          [--pattern shapes|noisy_square|frame_index]

Creates OUT_DIR/videos/*.{mp4,webm,...} and OUT_DIR/train.txt, OUT_DIR/val.txt (`path label` lines,
absolute paths), usable as `data.datasets: [{path: OUT_DIR/train.txt}]` with `data.backend: cpu`.
--val-fraction 0 writes training data only: no val.txt (an earlier one in OUT_DIR is removed).
"""
import argparse
import sys
import time


from vjepa_scale.data.synthetic_videos import CODECS, PATTERNS, frame_index_level, num_val_videos, write_synthetic_videos


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("out_dir")
    ap.add_argument("--num-videos", type=int, default=32, help="at least 1")
    ap.add_argument("--frames", type=int, default=16, help="frames per video, at least 1")
    ap.add_argument("--size", type=int, default=64, help="frame height and width in pixels (even, at least 16)")
    ap.add_argument("--codecs", nargs="+", default=["h264", "vp9"], choices=sorted(CODECS),
                    help="codecs used in turn (h264 -> .mp4, vp9 -> .webm, mjpeg -> .avi, hevc -> .mp4)")
    ap.add_argument("--fps", type=int, default=8, help="at least 1")
    ap.add_argument("--val-fraction", type=float, default=0.25,
                    help="share of videos in val.txt, in [0, 1); 0: training data only, no val.txt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pattern", choices=PATTERNS, default="shapes",
                    help="shapes: square over a static texture; noisy_square: square over per-frame noise; "
                    "frame_index: flat grey frames, frame t at level 8 t + 4 (at most 32 frames), to check "
                    "which frames a clip holds")
    sq = ap.add_argument_group("noisy_square settings (defaults: side 16, speed 2, noise 200, cell 4)")
    sq.add_argument("--side", type=int, help="square side in pixels")
    sq.add_argument("--speed", type=float, help="pixels per frame")
    sq.add_argument("--noise", type=float, help="block-noise amplitude (0: flat background)")
    sq.add_argument("--noise-cell", dest="cell", type=int, help="block-noise cell in pixels")
    args = ap.parse_args(argv)
    square = {k: getattr(args, k) for k in ("side", "speed", "noise", "cell") if getattr(args, k) is not None}
    if square and args.pattern != "noisy_square":
        ap.error(f"--{'/--'.join(square)} only apply to --pattern noisy_square")
    check_ranges(ap, args)
    t0 = time.time()
    paths = write_synthetic_videos(args.out_dir, args.num_videos, args.frames, args.size, args.codecs, args.fps,
                                   args.val_fraction, args.seed, args.pattern, square)
    val = paths["val"] if "val" in paths else "(no val.txt: --val-fraction 0)"
    print(f"wrote {args.num_videos} videos in {time.time() - t0:.1f}s; index files: {paths['train']} {val}")
    return 0


def check_ranges(ap: argparse.ArgumentParser, args) -> None:
    """argparse errors (exit 2) for values the writer or the encoders would refuse."""
    for flag, value in (("--num-videos", args.num_videos), ("--frames", args.frames), ("--fps", args.fps)):
        if value < 1:
            ap.error(f"{flag} must be at least 1, got {value}")
    if args.size < 16 or args.size % 2:
        ap.error(f"--size must be even and at least 16 (H.264 and VP9 4:2:0 need even sizes), got {args.size}")
    if args.pattern == "frame_index" and frame_index_level(args.frames - 1) > 255:
        ap.error(f"--frames must be at most 32 with --pattern frame_index, got {args.frames}")
    if not 0 <= args.val_fraction < 1:
        ap.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if args.val_fraction > 0 and num_val_videos(args.num_videos, args.val_fraction) == 0:
        ap.error(f"--val-fraction {args.val_fraction} of --num-videos {args.num_videos} puts no video in val.txt "
                 "(one video at least must stay for training); raise either, or give --val-fraction 0 for "
                 "training data only")


if __name__ == "__main__":
    sys.exit(main())
