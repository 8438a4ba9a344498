"""Index files in the reference format: one `path label` per line, space-separated.

Line rule (`config.split_index_line`; unambiguous, so paths may contain spaces): blank lines and
lines starting with `#` are ignored; a line of one field is a path without a label (-1; an error
where labels are required); otherwise the last whitespace-separated field is the label and must be
an integer, ASCII digits after an optional `-` (else a ConfigError naming the file and line), and
everything before it, inner spaces included, is the path.
So `my clip.mp4 3` is path "my clip.mp4" with label 3, and a path with spaces needs a label.

Several index files form one `VideoIndex` (entries concatenated in config order); their weights
drive the per-epoch mixture in `sampler.MixturePlan` (a null weight becomes the dataset's number of
entries: concatenated datasets). Relative video paths are resolved against the index file's folder
(its target's folder when the index is a symlink); a leading `~` is the home folder. A missing or empty
index file is a `ConfigError` naming it. A dataset path that is a folder lists its images
(.jpg/.jpeg/.png, sorted, label -1): an image dataset.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vjepa_scale.config import ConfigError, index_file_lines, split_index_line


@dataclass(frozen=True)
class VideoIndex:
    """All videos of a mixture: `paths[i]`, `labels[i]`, and per-dataset `sizes` / `weights` (resolved:
    never null) / `sources`."""

    paths: list[str]
    labels: list[int]
    sizes: list[int]
    weights: list[float]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    @functools.cached_property
    def starts(self) -> list[int]:
        """First entry of each dataset."""
        return dataset_starts(self.sizes)

    def dataset_of(self, i: int) -> int:
        """The dataset (position in data.datasets) entry `i` belongs to; IndexError outside the index."""
        if not 0 <= i < len(self.paths):
            raise IndexError(f"entry {i} is outside the index ({len(self.paths)} entries)")
        return dataset_at(self.starts, i)

    def span(self, i: int) -> tuple[int, int]:
        """[start, end) of the dataset that entry `i` belongs to."""
        d = self.dataset_of(i)
        return self.starts[d], self.starts[d] + self.sizes[d]


def dataset_starts(sizes: list[int]) -> list[int]:
    """First entry of each dataset of a concatenation of datasets of `sizes` entries."""
    return [sum(sizes[:d]) for d in range(len(sizes))]


def dataset_at(starts: list[int], i: int) -> int:
    """The dataset holding entry `i` of a concatenation whose datasets begin at `starts`."""
    return bisect.bisect_right(starts, i) - 1


_INDEX_HELP = ("a folder is read as an image set (.jpg/.jpeg/.png); videos need an index file of `path label` "
               "lines (README 'Data'; tools/make_synthetic_videos.py writes one)")


def read_index(path: str | os.PathLike, key: str = "data.datasets",
               require_labels: bool = False) -> tuple[list[str], list[int]]:
    """(paths, labels) of one index file; raises ConfigError naming the file and line on bad input.

    The label column is optional (-1 when absent; unused in pretraining) unless `require_labels`,
    which demands an integer label >= 0 on every line (evaluation). See the module docstring for the rule.
    """
    p = Path(path).expanduser()
    if p.is_dir() and require_labels:
        raise ConfigError(f"{key}: '{path}' is a folder, read as images without labels; this needs an index file "
                          f"of `path label` lines, every label an integer >= 0")
    if p.is_dir():
        images = sorted(str(x) for x in _folder_images(p.resolve(), path, key))  # absolute: under the resolved folder
        return images, [-1] * len(images)
    resolve = _resolver(p)
    paths, labels = [], []
    for _, video, label in _entries(p, path, key, require_labels):
        paths.append(resolve(video))
        labels.append(label)
    return paths, labels


def _resolver(p: Path):
    """entry -> the path it names, for the entries of index file `p`: a leading `~` or `~user` expanded to
    that home folder, absolute entries as written, relative ones under the folder of `p` with symlinks
    resolved (an index that is a link: under its target's folder).

    The result is `str(folder / entry)`, pathlib's spelling (a `./` or a doubled `/` dropped), by string
    concatenation where pathlib would change nothing: the pathlib join per line took 5x the time of
    reading a 1M-line index of relative entries."""
    folder = p.resolve().parent  # resolved once: per line, a 1M-line index took 15 s
    prefix = os.path.join(str(folder), "")

    def resolve(entry: str) -> str:
        if entry.startswith("~"):
            entry = os.path.expanduser(entry)
        if os.path.isabs(entry):
            return entry
        if "//" in entry or entry.endswith("/") or "/./" in f"/{entry}/":
            return str(folder / entry)
        return prefix + entry

    return resolve


def check_index(path: str | os.PathLike, key: str = "data.datasets", kind: str = "auto") -> int:
    """Number of entries of an index file or image folder, with the errors of read_index and of
    `check_first_entries`; opens no video and stats only the first few entries, so it is cheap enough for
    the pre-flight checks (about 1 s per million lines).

    With `kind` auto, an index listing both images (.jpg/.jpeg/.png) and other files is a ConfigError: its
    first entry decides how every entry is decoded, so the entries of the other kind would all be skipped.
    """
    from vjepa_scale.config import IMAGE_SUFFIXES

    p = Path(path).expanduser()
    if p.is_dir():
        return len(_folder_images(p, path, key))
    counts, first = [0, 0], [None, None]  # [videos, images]
    for _, video, _ in _entries(p, path, key, False):
        image = video.lower().endswith(IMAGE_SUFFIXES)
        counts[image] += 1
        first[image] = first[image] or video
    check_first_entries(path, key)
    if kind == "auto" and all(counts):
        raise ConfigError(f"{key}: index file '{path}' lists {counts[1]} images (first '{first[1]}') and {counts[0]} "
                          f"other files (first '{first[0]}'), but one dataset is decoded as one kind (here: by its "
                          f"first entry). Put images and videos in separate index files (two data.datasets "
                          f"entries); setting this dataset's kind does not mix them, it only skips this check: "
                          f"the other kind's entries are then skipped (kind: video reads an image as a one-frame "
                          f"video: too_short, or that frame repeated under data.short_videos: pad; kind: image "
                          f"cannot read a video)")
    return sum(counts)


PREFLIGHT_ENTRIES = 8  # entries of an index whose files `check_first_entries` looks for (never the whole index)


def check_first_entries(path: str | os.PathLike, key: str = "data.datasets") -> None:
    """Pre-flight: ConfigError naming the index and the rule when none of its first PREFLIGHT_ENTRIES entries
    names an existing file (an index written relative to the working directory, say), or when its first
    entry names none, the later ones do, and it looks like a column header (`path`, `video_path,label`, a
    name without extension). A few os.stat calls, whatever the index's size (a 1M-line index on a network
    file system is not listed); an image folder passes. Other missing or unreadable files are skipped at
    run time (`data.skips`)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return
    entries = list(itertools.islice(_entries(p, path, key, False), PREFLIGHT_ENTRIES))
    resolve = _resolver(p)
    found = [os.path.exists(resolve(video)) for _, video, _ in entries]
    lineno, first, _ = entries[0]
    header = "," in first or not os.path.splitext(os.path.basename(first))[1]  # `video_path,label`, `path`
    if not any(found):
        scope = (f"none of its first {len(entries)} entries names" if len(entries) == PREFLIGHT_ENTRIES else
                 "its only entry names" if len(entries) == 1 else f"none of its {len(entries)} entries names")
        hints = []
        if "," in first:
            hints.append("the fields of a line are separated by spaces, not commas")
        if header and len(entries) > 1:
            hints.append(f"line {lineno} looks like a column header: delete it or start it with #")
        raise ConfigError(f"{key}: index file '{path}': {scope} an existing file (line {lineno}: '{first}' is "
                          f"{resolve(first)}). Relative entries resolve against the index file's folder "
                          f"({p.resolve().parent}), not the working directory, and a leading `~` is the home "
                          f"folder (README 'Data')" + "".join(f"; {h}" for h in hints))
    if not found[0] and header:
        raise ConfigError(f"{key}: {p}:{lineno}: '{first}' names no file ({resolve(first)}) and looks like a "
                          f"column header (the entries after it exist): delete the line or start it with #")


def check_first_videos(path: str | os.PathLike, key: str = "data.datasets", timeout_s: float = 0.0) -> None:
    """Pre-flight of a video dataset, after `check_index`: ConfigError naming the index and each file tried
    with its reason when none of the existing files among its first PREFLIGHT_ENTRIES entries is a readable
    video (`decode.check_opens`: the container, its stream header and first frame, each file within
    `timeout_s`; no packet scan). One readable file is enough: unusable files are skipped and counted at run
    time (`data.skips`). An image folder passes."""
    from vjepa_scale.data.decode import check_opens, first_readable

    p = Path(path).expanduser()
    if p.is_dir():
        return
    resolve = _resolver(p)
    first = [resolve(video) for _, video, _ in itertools.islice(_entries(p, path, key, False), PREFLIGHT_ENTRIES)]
    failures = [f"{e.path} ({e.summary})" for e in
                first_readable(list(dict.fromkeys(x for x in first if os.path.exists(x))), check_opens, timeout_s)]
    if failures:
        scope = f"its first {len(first)} entries" if len(first) == PREFLIGHT_ENTRIES else f"its {len(first)} entries"
        raise ConfigError(f"{key}: index file '{path}': none of the {len(failures)} existing file(s) among {scope} is "
                          f"a readable video, so training would skip every entry: " + "; ".join(failures))


def _folder_images(p: Path, path, key: str) -> list[Path]:
    """The images in folder `p` and its subfolders, linked ones included (ImageNet's class folders;
    paths under `p`, unsorted); ConfigError when there are none."""
    from vjepa_scale.config import IMAGE_SUFFIXES

    files, seen = [], set()
    for root, dirs, names in os.walk(p, followlinks=True):  # linked class folders too (ImageNet subsets)
        real = os.path.realpath(root)
        if real in seen:  # a link back into the tree: each folder once
            dirs[:] = []
            continue
        seen.add(real)
        files += [Path(root, name) for name in names]
    images = [x for x in files if x.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ConfigError(f"{key}: folder '{path}' holds no files ({_INDEX_HELP})")
    if not images:
        raise ConfigError(f"{key}: folder '{path}' holds no .jpg/.jpeg/.png images, subfolders included (first "
                          f"of its {len(files)} files: '{min(files).relative_to(p)}'): {_INDEX_HELP}")
    return images


def _entries(p: Path, path, key: str, require_labels: bool):
    """(line number, path as written, label) of each entry line of index file `p`, in order; ConfigError on
    a bad line, a missing file, or a file without entries."""
    if not p.is_file():
        raise ConfigError(f"{key}: index file '{path}' does not exist")
    n = 0
    for lineno, line in index_file_lines(p, key):
        entry = split_index_line(line)
        if entry is None:
            continue
        video, text = entry
        if text is not None and _is_int(text):
            label = int(text)
        elif text is not None:
            raise ConfigError(f"{key}: {p}:{lineno}: label {text!r} is not an integer (expected `path label`, the "
                              f"label in digits 0-9; the last field of a line is its label, so a path with spaces "
                              f"needs a label)")
        elif not require_labels:
            label = -1
        else:
            raise ConfigError(f"{key}: {p}:{lineno}: label missing (expected `path label`, got {video!r})")
        if require_labels and label < 0:
            raise ConfigError(f"{key}: {p}:{lineno}: label {label} is negative (class ids start at 0)")
        n += 1
        yield lineno, video, label
    if not n:
        raise ConfigError(f"{key}: index file '{path}' lists no videos (expected `path label` lines; "
                          f"blank and # lines are skipped)")


_INT = re.compile(r"-?[0-9]+")


def _is_int(s: str) -> bool:
    """ASCII digits, optionally after a `-`: what int() reads, less its `+3`, `1_0` and non-ASCII digits."""
    return _INT.fullmatch(s) is not None


def load_index(datasets, key: str = "data.datasets") -> VideoIndex:
    """Concatenate the index files of `datasets` (a list of DatasetSpec) into one VideoIndex; a null
    weight is the dataset's number of entries."""
    all_paths, all_labels, sizes, weights, sources = [], [], [], [], []
    for i, spec in enumerate(datasets):
        paths, labels = read_index(spec.path, f"{key}[{i}].path")
        all_paths += paths
        all_labels += labels
        sizes.append(len(paths))
        weights.append(float(len(paths) if spec.weight is None else spec.weight))
        sources.append(str(spec.path))
    if not all_paths:
        raise ConfigError(f"{key} is empty: give at least one index file")
    return VideoIndex(all_paths, all_labels, sizes, weights, sources)
