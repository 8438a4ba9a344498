"""Index files (`vjepa_scale.data.index`, `config.index_file_lines`): encoding, entry resolution and the
pre-flight checks of their first entries (the loaders that read them: test_data_video.py; evaluation's
label checks: test_eval.py)."""
from __future__ import annotations

import re

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


def demo_with(*paths: str):
    from vjepa_scale.config import load_config

    return load_config("cpu_demo", ["data.backend=cpu", "data.datasets=[" + ", ".join(f"{{path: {p}}}" for p in paths)
                                    + "]"])


def test_an_index_whose_first_entries_name_no_file_is_refused_in_preflight(tmp_path, monkeypatch, capsys):
    """Entries written relative to the working directory (ours resolve against the index file's folder) were
    found only by the loader's readability check, after the engines were built (exit 1, two tracebacks):
    pre-flight looks for the first 8 entries' files and refuses (exit 2) naming the index, the first entry's
    path and the rule."""
    from helpers import load_tool
    from vjepa_scale.train.launch import check_data_paths

    monkeypatch.chdir(tmp_path)
    touch(*(tmp_path / "data" / f"{i}.mp4" for i in range(20)))
    (tmp_path / "lists").mkdir()
    idx = tmp_path / "lists" / "train.txt"
    idx.write_text("".join(f"data/{i}.mp4 0\n" for i in range(20)))  # relative to the cwd, not to lists/
    message = (rf"^data\.datasets\[1\]\.path: index file '{idx}': none of its first 8 entries names an existing file "
               rf"\(line 1: 'data/0\.mp4' is {tmp_path.resolve()}/lists/data/0\.mp4\)\. Relative entries resolve "
               rf"against the index file's folder \({tmp_path.resolve()}/lists\), not the working directory, and a "
               rf"leading `~` is the home folder")
    ok = tmp_path / "ok.txt"
    ok.write_text("data/0.mp4 0\n")
    with pytest.raises(ConfigError, match=message + r" \(README 'Data'\)$"):
        check_data_paths(demo_with(ok, idx))
    code = load_tool("train").main(["--config", "cpu_demo", "--output-dir", str(tmp_path / "run"), "--opt",
                                    "data.backend=cpu", "--opt", f"data.datasets=[{{path: {ok}}}, {{path: {idx}}}]"])
    err = capsys.readouterr().err
    assert code == 2 and re.search("config error: " + message[1:], err) and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    idx.write_text("".join(f"../data/{i}.mp4 0\n" for i in range(20)))
    check_data_paths(demo_with(idx))
    # a few entries, none there: counted as they are; CSV lines get a hint
    idx.write_text("x.mp4,0\ny.mp4,1\n")
    with pytest.raises(ConfigError, match=r"none of its 2 entries names an existing file .*; the fields of a line are "
                                          r"separated by spaces, not commas; line 1 looks like a column header"):
        check_data_paths(demo_with(idx))
    idx.write_text("x.mp4 0\n")
    with pytest.raises(ConfigError, match=r"its only entry names an existing file"):
        check_data_paths(demo_with(idx))
    # only the first 8 are looked for: one file among them is enough, the rest are skipped at run time
    idx.write_text("".join(f"gone{i}.mp4 0\n" for i in range(7)) + "../data/0.mp4 0\n")
    check_data_paths(demo_with(idx))
    idx.write_text("".join(f"gone{i}.mp4 0\n" for i in range(8)) + "../data/0.mp4 0\n")
    with pytest.raises(ConfigError, match=r"none of its first 8 entries"):
        check_data_paths(demo_with(idx))


def test_a_video_index_without_a_readable_video_among_its_first_entries_is_refused_in_preflight(tmp_path, capsys):
    """Entries that exist but none of which is a video (text files named .mp4) were found only by the loader's
    readability check, after the engines were built (exit 1): pre-flight opens the existing files among the
    first 8 entries (header and first frame) and refuses (exit 2) naming the index and each file's reason;
    one readable file among them is enough (the others are skipped and counted at run time)."""
    from helpers import load_tool
    from helpers.videos import streamable_videos
    from vjepa_scale.data.index import check_first_videos

    fakes = [tmp_path / f"clip{i}.mp4" for i in range(3)]
    for f in fakes:
        f.write_text(f"not a video {f.name}\n")
    idx = tmp_path / "train.txt"
    idx.write_text("".join(f"{f.name} 0\n" for f in fakes) + "gone.mp4 0\n")
    reasons = "; ".join(rf"{re.escape(str(f))} \(unreadable: not a readable container [^;]*\)" for f in fakes)
    message = (rf"data\.datasets\[0\]\.path: index file '{re.escape(str(idx))}': none of the 3 existing file\(s\) "
               rf"among its 4 entries is a readable video, so training would skip every entry: {reasons}$")
    with pytest.raises(ConfigError, match="^" + message):
        check_first_videos(idx, "data.datasets[0].path")
    code = load_tool("train").main(["--config", "cpu_demo", "--output-dir", str(tmp_path / "run"), "--opt",
                                    "data.backend=cpu", "--opt", f"data.datasets=[{{path: {idx}}}]"])
    err = capsys.readouterr().err
    assert code == 2 and re.search("config error: " + message, err, re.M) and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
    video = streamable_videos(tmp_path / "good", 1)[0]
    idx.write_text("".join(f"{f.name} 0\n" for f in fakes) + f"{video} 0\n")  # one readable: nothing said
    check_first_videos(idx, "data.datasets[0].path")
    idx.write_text("".join(f"{f.name} 0\n" for f in fakes * 3) + f"{video} 0\n")  # not among the first 8
    with pytest.raises(ConfigError, match=r"none of the 3 existing file\(s\) among its first 8 entries"):
        check_first_videos(idx, "data.datasets[0].path")


def test_a_leading_tilde_in_an_entry_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    touch(tmp_path / "home" / "v" / "a.mp4")
    idx = tmp_path / "i.txt"
    idx.write_text("~/v/a.mp4 1\n~/v/b.mp4 2\n")
    assert read_index(idx) == ([f"{tmp_path}/home/v/a.mp4", f"{tmp_path}/home/v/b.mp4"], [1, 2])
    assert check_index(idx) == 2


@pytest.mark.parametrize("header", ["path", "Filename", "video_path,label", "videos"])
def test_a_header_line_is_refused_naming_the_line(tmp_path, header):
    """A one-column header (`path`, `video_path,label`) was read as a video, skipped as missing and counted."""
    from vjepa_scale.train.launch import check_data_paths

    touch(tmp_path / "a.mp4", tmp_path / "b.jpg")
    idx = tmp_path / "i.txt"
    idx.write_text(f"{header}\na.mp4 0\na.mp4 1\n")
    with pytest.raises(ConfigError, match=rf"^data\.datasets\[0\]\.path: {idx}:1: '{header}' names no file "
                                          rf"\({tmp_path.resolve()}/{header}\) and looks like a column header \(the "
                                          rf"entries after it exist\): delete the line or start it with #$"):
        check_data_paths(demo_with(idx))
    idx.write_text(f"# {header}\na.mp4 0\n")
    check_data_paths(demo_with(idx))
    idx.write_text(f"{header}\nb.jpg\n")  # before the mixed-kind refusal: the header is what is wrong
    with pytest.raises(ConfigError, match=r"looks like a column header"):
        check_data_paths(demo_with(idx))
    idx.write_text("gone.mp4 0\na.mp4 1\n")  # a missing video first: skipped at run time, as any other
    check_data_paths(demo_with(idx))


@pytest.mark.parametrize("label", ["+3", "1_0", "\u0663", "３", "0x3", "3.0"])
def test_labels_are_ascii_digits(tmp_path, label):
    """int() also reads `+3`, `1_0` and Arabic-Indic or full-width digits: an index is read as it is written."""
    idx = tmp_path / "i.txt"
    idx.write_text(f"a.mp4 0\nb.mp4 {label}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"i\.txt:2: label '{re.escape(label)}' is not an integer \(expected "
                                          rf"`path label`, the label in digits 0-9"):
        read_index(idx)
    idx.write_text("a.mp4 -0\nb.mp4 007\nc.mp4 -12\n")
    assert read_index(idx)[1] == [0, 7, -12]


def test_an_index_listed_twice_gets_a_warning(tmp_path, monkeypatch, caplog):
    """The same file under two spellings (`dir/../x.txt`) is two datasets drawn with both weights: a warning
    in pre-flight (rank 0), not an error."""
    from vjepa_scale.train.launch import check_data_paths

    touch(tmp_path / "a.mp4", tmp_path / "sub" / "b.mp4")
    idx, other = tmp_path / "x.txt", tmp_path / "sub" / "y.txt"
    idx.write_text("a.mp4 0\n")
    other.write_text("b.mp4 0\n")
    cfg = demo_with(idx, other, tmp_path / "sub" / ".." / "x.txt")
    monkeypatch.delenv("RANK", raising=False)
    with caplog.at_level("WARNING", logger="vjepa_scale.data"):
        check_data_paths(cfg)
    assert [r.getMessage() for r in caplog.records] == [
        f"data.datasets[0].path and data.datasets[2].path are the same index file ({idx.resolve()}): its entries are "
        f"drawn as two datasets, with both weights; list it once unless that is intended"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="vjepa_scale.data"):
        check_data_paths(demo_with(idx, other))
        monkeypatch.setenv("RANK", "1")
        check_data_paths(cfg)
    assert not caplog.records
