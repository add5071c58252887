"""`hashsvc load` -> `hashsvc export` -> `hashsvc load` through the real CLI
and server gives the same set, in every format, with the data that once broke
it: label values holding ';' or spaces at an end (HMA tags, JSON objects),
an auto-named Chromaprint entry whose name is longer than an entry name may
be, and two videos whose names differ only in characters a file name cannot
hold."""

from __future__ import annotations

import json

import pytest

from hashsvc.client import cli

PDQ = "0123456789abcdef" * 4
PDQ2 = "f" * 64
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
LONG_PRINT = bytes(range(256)).hex() * 2  # a 1,036-character auto-name
LABELS = {
    "group": "Al Qaeda; x",
    "outlet": " Amaq ",
    "note": "a=b;c=d",
    "path": "C:\\x\\;y\\",
    "empty": "",
    "nbsp": "Al\u00a0Qaeda",
    "tags": "video b a",
    "collab": " GIFCT",
    "ideology": "Islamist; Salafi",
    "file_type": "",
}
# a partner's HMA export: GIFCT tags with escaped ';' and spaces
HMA_FILE = (
    "signal_type,signal_str,collab,category,tags\n"
    f'pdq,{PDQ2},GIFCT,terrorism,"group:Al%20Qaeda%3B%20x outlet:%20Amaq propaganda"\n'
)


def _rows(*objects: dict) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)


SOURCE = _rows(
    {"signal_type": "pdq", "signal_value": PDQ, "entry": "a", "labels": LABELS},
    {"signal_type": "md5", "signal_value": MD5, "entry": "a", "labels": LABELS},
    {"signal_type": "chromaprint", "signal_value": LONG_PRINT, "labels": {"group": "x; y"}},
)
VIDEOS = _rows(
    *(
        {
            "signal_type": "pdq",
            "signal_value": value,
            "entry": name,
            "labels": {"group": name},
            "quality": 90,
            "variant": f"frame:{frame}",
            "position": frame / 3,
        }
        for name in ("2015/clip.mp4", "2015_clip.mp4", "2015 clip.mp4")
        for frame, value in enumerate((PDQ, PDQ2))
    )
)


@pytest.fixture
def run(harness, monkeypatch, capsys):
    def run(*argv):
        monkeypatch.setenv("HASHSVC_SERVER", harness.address)
        monkeypatch.setenv("HASHSVC_TOKEN", harness.tokens["admin"])
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    return run


def _load(run, set_name: str, *paths) -> dict:
    return json.loads(
        run("load", "--set", set_name, "--strict", "--json", "--quiet", *map(str, paths))
    )


def _contents(run, set_name: str, with_variants: bool = True) -> set:
    """The set as (entry, signal type, value, variant, labels) rows."""
    out = set()
    for line in run("export", "--set", set_name, "--format", "jsonl").splitlines():
        row = json.loads(line)
        entry = row["entry"] or f"{row['signal_type']}:{row['signal_value']}"
        variant = row.get("variant", "original") if with_variants else ""
        labels = json.dumps(row["labels"], sort_keys=True)
        out.add((entry, row["signal_type"], row["signal_value"], variant, labels))
    return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "hma", "tcap"])
def test_load_export_load_gives_the_same_set(run, tmp_path, fmt):
    source = tmp_path / "source.jsonl"
    source.write_text(SOURCE, encoding="utf-8")
    partner = tmp_path / "partner.csv"
    partner.write_text(HMA_FILE, encoding="utf-8")
    run("sets", "create", "src")
    assert _load(run, "src", source, partner)["added"] == 3  # entries
    want = _contents(run, "src")
    assert (f"chromaprint:{LONG_PRINT}", "chromaprint", LONG_PRINT, "original",
            '{"group": "x; y"}') in want  # fmt: skip

    exported = tmp_path / f"export.{fmt}"
    exported.write_text(run("export", "--set", "src", "--format", fmt), encoding="utf-8")
    run("sets", "create", "copy")
    summary = _load(run, "copy", exported)
    assert (summary["added"], summary["rejected"]) == (3, 0)
    assert _contents(run, "copy") == want

    # loading the export into the set it came from changes nothing
    summary = _load(run, "src", exported)
    assert (summary["added"], summary["updated"], summary["removed"]) == (0, 0, 0)
    assert summary["unchanged"] == 3 and _contents(run, "src") == want


def test_vpdq_export_writes_a_file_per_video_and_names_come_back(run, tmp_path):
    source = tmp_path / "videos.jsonl"
    source.write_text(VIDEOS, encoding="utf-8")
    run("sets", "create", "videos")
    assert _load(run, "videos", source)["added"] == 3

    out_dir = tmp_path / "vpdq"
    run("export", "--set", "videos", "--format", "vpdq", "--output", str(out_dir))
    files = sorted(out_dir.iterdir())
    assert len(files) == 3  # none overwrote another
    run("sets", "create", "copy")
    assert _load(run, "copy", *files)["added"] == 3
    # vPDQ files carry frames and names, no labels
    no_labels = {row[:4] for row in _contents(run, "videos")}
    assert {row[:4] for row in _contents(run, "copy")} == no_labels
    assert {row[4] for row in _contents(run, "copy")} == {"{}"}
    # and into the set they came from: nothing changes, its labels stay
    want = _contents(run, "videos")
    summary = _load(run, "videos", *files)
    assert (summary["added"], summary["updated"], summary["unchanged"]) == (0, 0, 3)
    assert _contents(run, "videos") == want


def test_videos_round_trip_through_hma_as_vpdq_rows(run, tmp_path):
    """A video goes out to an HMA export as one `vpdq` row (frames, quality,
    seconds, as python-threatexchange writes it) and comes back the same."""
    source = tmp_path / "videos.jsonl"
    source.write_text(VIDEOS, encoding="utf-8")
    run("sets", "create", "videos")
    assert _load(run, "videos", source)["added"] == 3
    exported = run("export", "--set", "videos", "--format", "hma")
    assert [line.split(",")[0] for line in exported.splitlines()[1:]] == ["vpdq"] * 3
    path = tmp_path / "export.csv"
    path.write_text(exported, encoding="utf-8")
    run("sets", "create", "copy")
    assert _load(run, "copy", path)["added"] == 3
    assert _contents(run, "copy") == _contents(run, "videos")
    exported_rows = run("export", "--set", "copy", "--format", "jsonl").splitlines()
    # seconds to the millisecond, as vpdq rows keep them
    assert sorted(
        (row["entry"], row["quality"], row["position"]) for row in map(json.loads, exported_rows)
    ) == sorted(
        (name, 90, round(frame / 3, 3))
        for name in ("2015/clip.mp4", "2015_clip.mp4", "2015 clip.mp4")
        for frame in (0, 1)
    )
    summary = _load(run, "videos", path)  # into the set it came from: nothing changes
    assert (summary["added"], summary["updated"], summary["unchanged"]) == (0, 0, 3)
