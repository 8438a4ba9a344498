#!/usr/bin/env python
"""Write a synthetic video set: moving textured shapes labelled by direction of motion.

    python tools/make_synthetic_videos.py OUT_DIR [--num-videos 32] [--frames 16] [--size 64]
                                          [--codecs h264 vp9] [--val-fraction 0.25] [--seed 0]

Creates OUT_DIR/videos/*.{mp4,webm,...} and OUT_DIR/train.txt, OUT_DIR/val.txt (`path label` lines,
absolute paths), usable as `data.datasets: [{path: OUT_DIR/train.txt}]` with `data.backend: cpu`.
"""
import argparse
import sys
import time


from vjepa_scale.data.synthetic_videos import CODECS, PATTERNS, write_synthetic_videos


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--num-videos", type=int, default=32)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    ap.add_argument("--codecs", nargs="+", default=["h264", "vp9"], choices=sorted(CODECS),
                    help="codecs used in turn (h264 -> .mp4, vp9 -> .webm, mjpeg -> .avi, hevc -> .mp4)")
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pattern", choices=PATTERNS, default="shapes",
                    help="shapes: square over a static texture; noisy_square: square over per-frame noise")
    sq = ap.add_argument_group("noisy_square settings (defaults: side 16, speed 2, noise 200, cell 4)")
    sq.add_argument("--side", type=int, help="square side in pixels")
    sq.add_argument("--speed", type=float, help="pixels per frame")
    sq.add_argument("--noise", type=float, help="block-noise amplitude (0: flat background)")
    sq.add_argument("--noise-cell", dest="cell", type=int, help="block-noise cell in pixels")
    args = ap.parse_args(argv)
    square = {k: getattr(args, k) for k in ("side", "speed", "noise", "cell") if getattr(args, k) is not None}
    if square and args.pattern != "noisy_square":
        ap.error(f"--{'/--'.join(square)} only apply to --pattern noisy_square")
    t0 = time.time()
    paths = write_synthetic_videos(args.out_dir, args.num_videos, args.frames, args.size, args.codecs, args.fps,
                                   args.val_fraction, args.seed, args.pattern, square)
    print(f"wrote {args.num_videos} videos in {time.time() - t0:.1f}s; index files: "
          f"{paths['train']} {paths['val']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
