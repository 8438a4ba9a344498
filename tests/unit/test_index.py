"""Index files (`vjepa_scale.data.index`, `config.index_file_lines`): encoding, entry resolution and the
pre-flight checks of their first entries (the loaders that read them: test_data_video.py; evaluation's
label checks: test_eval.py)."""
from __future__ import annotations

import pytest

from vjepa_scale.config import ConfigError, DatasetSpec
from vjepa_scale.data.index import check_index, read_index


def touch(*paths) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_a_byte_order_mark_is_not_part_of_the_first_path(tmp_path):
    """Windows editors start a UTF-8 file with U+FEFF: it was read into the first path (`\\ufeff/abs/x.mp4`,
    then joined to the index folder and skipped as missing)."""
    touch(tmp_path / "v" / "a.mp4", tmp_path / "v" / "b.jpg")
    idx = tmp_path / "bom.txt"
    idx.write_text(f"{tmp_path}/v/a.mp4 0\nv/a.mp4 1\n", encoding="utf-8-sig")
    assert idx.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_index(idx) == ([f"{tmp_path}/v/a.mp4"] * 2, [0, 1])
    assert check_index(idx) == 2
    img = tmp_path / "img.txt"
    img.write_text("v/b.jpg\n", encoding="utf-8-sig")
    assert DatasetSpec(str(img)).is_image()


def test_an_index_that_is_not_utf8_names_the_file_and_line(tmp_path):
    """A Latin-1 path on line 3 was a bare UnicodeDecodeError (train pre-flight and eval alike)."""
    idx = tmp_path / "latin1.txt"
    idx.write_bytes(b"a.mp4 0\nb.mp4 1\ncaf\xe9.mp4 2\n")
    for call in (lambda: read_index(idx, "data.val_index", require_labels=True),
                 lambda: check_index(idx, "data.datasets[0].path")):
        with pytest.raises(ConfigError, match=r"^data\.(val_index|datasets\[0\]\.path): .*latin1\.txt:3: not UTF-8 "
                                              r"text \(byte 0xe9 at byte 4 of the line\); index files are read as "
                                              r"UTF-8: convert it"):
            call()
    assert not DatasetSpec(str(idx)).is_image()  # the kind guess reads as far as it can; pre-flight names the line
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("a.mp4 0\n", encoding="utf-16")
    with pytest.raises(ConfigError, match=r"utf16\.txt:1: not UTF-8 text \(byte 0xff at byte 1 of the line; the "
                                          r"file looks like UTF-16\)"):
        check_index(utf16)


def test_relative_entries_join_as_pathlib_did(tmp_path):
    """Relative entries are joined by string concatenation (5x faster on a 1M-line index), with pathlib's
    result for every spelling: `./`, doubled and trailing slashes as `folder / entry` gives them, `..` kept;
    an index that is a symlink resolves them against its target's folder (README "Data")."""
    entries = ["a.mp4", "./a.mp4", "x//y.mp4", "x/./y.mp4", "x/../y.mp4", "dir/", ".", "..", "a b/c d.mp4",
               ".hidden.mp4", "x/.", "x/..", "...", "x/.y/z.mp4", "/abs//x.mp4", "/abs/./x.mp4"]
    (tmp_path / "real").mkdir()
    idx = tmp_path / "real" / "i.txt"
    idx.write_text("".join(f"{e} 0\n" for e in entries))
    folder = (tmp_path / "real").resolve()
    expected = [e if e.startswith("/") else str(folder / e) for e in entries]
    assert read_index(idx)[0] == expected
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "i.txt").symlink_to(idx)
    assert read_index(tmp_path / "links" / "i.txt")[0] == expected


def test_plain_relative_entries_are_joined_without_pathlib(tmp_path, monkeypatch):
    """The speed of the fix above, without timing: a pathlib join per line made a 1M-line index of relative
    entries load in 5.2 s where absolute ones took 1.0 s; entries pathlib would not respell take none."""
    import pathlib

    idx = tmp_path / "i.txt"
    idx.write_text("".join(f"videos/c{i % 3}/clip {i}.mp4 {i % 3}\n" for i in range(100)) + "./odd.mp4 0\n")
    joins = []
    join = pathlib.PurePath.__truediv__
    monkeypatch.setattr(pathlib.PurePath, "__truediv__", lambda self, key: joins.append(key) or join(self, key))
    paths, _ = read_index(idx)
    monkeypatch.undo()
    assert paths[1] == f"{tmp_path.resolve()}/videos/c1/clip 1.mp4" and joins == ["./odd.mp4"]
