"""Index files in the reference format: one `path label` per line, space-separated.

Line rule (unambiguous, so paths may contain spaces): blank lines and lines starting with `#` are
ignored; a line of one field is a path without a label (-1; an error where labels are required);
otherwise the last whitespace-separated field is the label and must be an integer (else a
ConfigError naming the file and line), and everything before it, inner spaces included, is the path.
So `my clip.mp4 3` is path "my clip.mp4" with label 3, and a path with spaces needs a label.

Several index files form one `VideoIndex` (entries concatenated in config order); their weights
drive the per-epoch mixture in `sampler.MixturePlan`. Relative video paths are resolved against the
index file's folder. A missing or empty index file is a `ConfigError` naming it. A dataset path that
is a folder lists its images (.jpg/.jpeg/.png, sorted, label -1): an image dataset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vjepa_scale.config import ConfigError


@dataclass(frozen=True)
class VideoIndex:
    """All videos of a mixture: `paths[i]`, `labels[i]`, and per-dataset `sizes` / `weights` / `sources`."""

    paths: list[str]
    labels: list[int]
    sizes: list[int]
    weights: list[float]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def span(self, i: int) -> tuple[int, int]:
        """[start, end) of the dataset that entry `i` belongs to."""
        start = 0
        for size in self.sizes:
            if i < start + size:
                return start, start + size
            start += size
        raise IndexError(f"entry {i} is outside the index ({start} entries)")


def read_index(path: str | os.PathLike, key: str = "data.datasets",
               require_labels: bool = False) -> tuple[list[str], list[int]]:
    """(paths, labels) of one index file; raises ConfigError naming the file and line on bad input.

    The label column is optional (-1 when absent; unused in pretraining) unless `require_labels`,
    which demands an integer label >= 0 on every line (evaluation). See the module docstring for the rule.
    """
    p = Path(path)
    if p.is_dir():
        from vjepa_scale.config import IMAGE_SUFFIXES

        images = sorted(str(x.resolve()) for x in p.iterdir() if x.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ConfigError(f"{key}: folder '{path}' holds no .jpg/.jpeg/.png images")
        return images, [-1] * len(images)
    if not p.is_file():
        raise ConfigError(f"{key}: index file '{path}' does not exist")
    paths, labels = [], []
    with open(p) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) == 2 and _is_int(parts[1]):
                video, label = parts[0], int(parts[1])
            elif len(parts) == 2:
                raise ConfigError(f"{key}: {p}:{lineno}: label {parts[1]!r} is not an integer (expected `path label`; "
                                  f"the last field of a line is its label, so a path with spaces needs a label)")
            elif not require_labels:
                video, label = line, -1
            else:
                raise ConfigError(f"{key}: {p}:{lineno}: label missing (expected `path label`, got {line!r})")
            if require_labels and label < 0:
                raise ConfigError(f"{key}: {p}:{lineno}: label {label} is negative (class ids start at 0)")
            if not os.path.isabs(video):
                video = str(p.resolve().parent / video)
            paths.append(video)
            labels.append(label)
    if not paths:
        raise ConfigError(f"{key}: index file '{path}' lists no videos")
    return paths, labels


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def load_index(datasets, key: str = "data.datasets") -> VideoIndex:
    """Concatenate the index files of `datasets` (a list of DatasetSpec) into one VideoIndex."""
    all_paths, all_labels, sizes, weights, sources = [], [], [], [], []
    for i, spec in enumerate(datasets):
        paths, labels = read_index(spec.path, f"{key}[{i}].path")
        all_paths += paths
        all_labels += labels
        sizes.append(len(paths))
        weights.append(float(spec.weight))
        sources.append(str(spec.path))
    if not all_paths:
        raise ConfigError(f"{key} is empty: give at least one index file")
    return VideoIndex(all_paths, all_labels, sizes, weights, sources)
