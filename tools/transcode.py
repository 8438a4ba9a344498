#!/usr/bin/env python
"""Re-encode the videos of an index file for NVDEC throughput (short GOP, small frames) + a new index.

    python tools/transcode.py data/k400_train.txt /scratch/k400_nvdec --gop 16 --short-side 256 --workers 16

writes /scratch/k400_nvdec/videos/... (each source's name + .mp4 unless it is one, e.g. a/x.webm.mp4; H.264 yuv420p, a
keyframe every --gop frames, short side --short-side, never upscaled; rotated phone videos written upright) and
/scratch/k400_nvdec/k400_train.txt (`path label` with absolute paths; label -1 for unlabeled entries).
Files that cannot be read (or hold no video stream) are left out of the new index and listed; when none
can be read, no index is written and the exit status is 1. An output path that is a source video, or a new
index that is the source index, is refused before any work (exit 2). See vjepa_scale.data.transcode.
"""
import argparse
import sys

from vjepa_scale.data.transcode import transcode_index


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index", help="index file (`path label` per line)")
    p.add_argument("out_dir", help="output folder (videos/ and the new index file)")
    p.add_argument("--gop", type=int, default=16, help="frames between keyframes (default 16)")
    p.add_argument("--short-side", type=int, default=256,
                   help="short side in pixels, near the training crop (default 256)")
    p.add_argument("--workers", type=int, default=1, help="files transcoded in parallel")
    p.add_argument("--out-index", default=None, help="new index path (default OUT_DIR/<index name>)")
    a = p.parse_args(argv)
    try:
        new_index, failed = transcode_index(a.index, a.out_dir, a.gop, a.short_side, a.workers, a.out_index)
    except ValueError as e:  # a bad index file (ConfigError) or outputs that would overwrite inputs
        p.error(str(e))
    for src, err in failed:
        print(f"left out {src}: {err}", file=sys.stderr)
    if new_index is None:
        print(f"transcode.py: error: none of the {len(failed)} file(s) of {a.index} could be transcoded; "
              "no index written", file=sys.stderr)
        return 1
    print(f"wrote {new_index} ({len(failed)} file(s) left out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
