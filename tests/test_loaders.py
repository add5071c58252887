"""Each interchange format: good rows become records, bad rows are rejected
with line and reason, and what a writer writes its reader reads back."""

from __future__ import annotations

import io
import os
import random

import pytest

import loaders
from hashsvc_testing.vectors import vector
from loaders import hma, records, vpdq
from loaders.records import Record, Rejected

PDQ = "f" * 64
PDQ2 = "0123456789abcdef" * 4
MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def read(text: str, fmt: str = "auto", source: str = "f") -> tuple[list[Record], list[Rejected]]:
    items = list(loaders.read(io.StringIO(text), fmt, source))
    return [i for i in items if isinstance(i, Record)], [
        i for i in items if isinstance(i, Rejected)
    ]


def test_csv_rows_labels_and_malformed_rows_by_line():
    good, bad = read(
        "signal_type,signal_value,entry,labels,deleted\n"
        f"pdq,{PDQ},amaq-1,group=ISIS;outlet=Amaq,\n"
        f"pdq,{MD5},x,,\n"  # 32 hex digits labelled PDQ: once crashed HMA's index build
        f"md5,{MD5},amaq-1,group=ISIS,\n"
        f"sha256,{SHA[:-1]}z,y,,\n"
        f"tmk,{PDQ},z,,\n"
        f"pdq,{PDQ2},w,novalue,\n"
        f"pdq,,amaq-1,,true\n"
    )
    assert [(r.line, r.signal_type, r.entry) for r in good] == [
        (2, "pdq", "amaq-1"),
        (4, "md5", "amaq-1"),
        (8, "pdq", "amaq-1"),
    ]
    assert good[0].labels == {"group": "ISIS", "outlet": "Amaq"}
    assert good[0].signal_value == bytes.fromhex(PDQ)
    assert good[2].deleted and good[2].signal_value == b""
    reasons = {r.line: r.reason for r in bad}
    assert set(reasons) == {3, 5, 6, 7}
    assert "64 hex digits, got 32" in reasons[3]
    assert "hexadecimal" in reasons[5]
    assert "unsupported signal type" in reasons[6]
    assert "key=value" in reasons[7]
    assert all(r.source == "f" for r in bad)


def test_csv_without_optional_columns_names_entries_after_their_signal():
    good, bad = read(f"signal_type,signal_value\npdq,{PDQ}\n\nMD5,0x{MD5.upper()}\n")
    assert not bad
    assert [r.entry_name for r in good] == [f"pdq:{PDQ}", f"md5:{MD5}"]
    assert good[0].labels is None  # the file says nothing about labels


def test_header_without_signal_columns_is_one_rejection():
    good, bad = read("hash_value,whatever\nx,y\n", fmt="csv")
    assert not good and bad[0].line == 1 and "signal_type" in bad[0].reason


def test_tsv_and_jsonl():
    good, bad = read(f"signal_type\tsignal_value\tentry\npdq\t{PDQ}\ta\n", source="x.tsv")
    assert not bad and good[0].entry == "a"
    good, bad = read(
        f'{{"signal_type": "pdq", "signal_value": "{PDQ}", "labels": {{"group": "AQ"}}}}\n'
        "not json\n"
        f'{{"signal_type": "sha256", "signal_value": "{SHA}", "labels": "a=b", "deleted": true}}\n'
        f'{{"signal_type": "pdq", "signal_value": "{PDQ}", "labels": {{"1bad": "x"}}}}\n'
    )
    assert [r.line for r in good] == [1, 3]
    assert good[0].labels == {"group": "AQ"} and good[1].deleted and good[1].labels == {"a": "b"}
    assert [r.line for r in bad] == [2, 4]


def test_hma_export_with_gifct_tags():
    good, bad = read(
        "signal_type,signal_str,collab,category,tags\n"
        f"pdq,{PDQ},GIFCT,terrorism,group:ISIS outlet:Amaq propaganda\n"
        "url,https://example.org/,Sample Signals,INVESTIGATION_SEED,\n"
        f"video_md5,{MD5},GIFCT,,group:AQ\n"
    )
    assert [r.line for r in bad] == [3] and "unsupported" in bad[0].reason
    assert good[0].labels == {
        "group": "ISIS",
        "outlet": "Amaq",
        "tags": "propaganda",
        "collab": "GIFCT",
        "category": "terrorism",
    }
    assert good[1].signal_type == "md5" and good[1].labels["group"] == "AQ"
    assert hma.tags_to_labels(hma.labels_to_tags({"group": "Al Qaeda; x"})) == {
        "group": "Al Qaeda; x"
    }


def test_tcap_rows():
    good, bad = read(
        "hash_digest,algorithm,ideology,file_type\n"
        f"{PDQ},PDQ,Islamist,image\n"
        f"{SHA},SHA-256,Far-right,video\n"
        f"{MD5},PDQ,Islamist,image\n"
    )
    assert [(r.signal_type, r.labels) for r in good] == [
        ("pdq", {"ideology": "Islamist", "file_type": "image"}),
        ("sha256", {"ideology": "Far-right", "file_type": "video"}),
    ]
    assert [r.line for r in bad] == [4]


def test_vpdq_file_is_one_video_entry():
    text = f"0,100,{PDQ},0.000\n1,87,{PDQ2},0.033\n2,50,{PDQ[:-2]},0.067\nbad line\n"
    good, bad = read(text, source="/x/release.mp4.txt")
    assert {r.entry for r in good} == {"release.mp4"}
    assert [(r.variant, r.quality, r.position) for r in good] == [
        ("frame:0", 100, 0.0),
        ("frame:1", 87, 0.033),
    ]
    assert [r.line for r in bad] == [3, 4]


def test_reference_vpdq_sample_reads_whole():
    # ../shared is part of the test setup: missing vectors are a failure, not a skip
    path = str(vector("threatexchange/vpdq/sample-hashes/chair-20-sd-bar.txt"))
    items = list(loaders.read_path(path))
    assert items and all(isinstance(i, Record) for i in items)
    assert items[0].entry == "chair-20-sd-bar" and items[0].variant == "frame:0"


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "hma", "tcap"])
def test_writers_round_trip(fmt):
    records = [
        Record("pdq", bytes.fromhex(PDQ), "a", {"group": "ISIS", "note": "x y"}, quality=90),
        Record("md5", bytes.fromhex(MD5), "a", {"group": "ISIS", "note": "x y"}),
        Record("chromaprint", bytes(range(8)), "b", {}),
        Record("sha256", bytes.fromhex(SHA), "c", {}, deleted=True),
    ]
    if fmt in ("csv", "tsv", "jsonl"):
        records.append(Record("pdq", bytes.fromhex(PDQ2), "v", {}, quality=70, variant="frame:3",
                              position=0.1))  # fmt: skip
    out = io.StringIO()
    assert loaders.write(out, records, fmt) == len(records)
    back, bad = read(out.getvalue(), fmt)
    assert not bad
    key = lambda r: (r.signal_type, r.signal_value, r.entry, r.labels or {}, r.deleted)  # noqa: E731
    assert [key(r) for r in back] == [key(r) for r in records]
    if fmt in ("csv", "tsv", "jsonl"):
        assert (back[0].quality, back[-1].variant, back[-1].position) == (90, "frame:3", 0.1)


def test_vpdq_writer_round_trip():
    frames = [
        Record("pdq", bytes.fromhex(PDQ2), "v", None, quality=80, variant="frame:1", position=0.5),
        Record("pdq", bytes.fromhex(PDQ), "v", None, quality=100, variant="frame:0", position=0.0),
    ]
    out = io.StringIO()
    loaders.write(out, frames, "vpdq")
    assert out.getvalue().splitlines()[0] == f"0,100,{PDQ},0.000"
    back, bad = read(out.getvalue(), "vpdq", source="v.txt")
    assert not bad and [r.variant for r in back] == ["frame:0", "frame:1"]


def test_format_detection():
    assert loaders.detect("a.csv", "signal_type,signal_str,collab,category,tags") == "hma"
    assert loaders.detect("a.csv", "hash_digest,algorithm,ideology,file_type") == "tcap"
    assert loaders.detect("a", '{"signal_type": "pdq"}') == "jsonl"
    assert loaders.detect("a.tsv", "signal_type\tsignal_value") == "tsv"
    assert loaders.detect("v.txt", f"0,100,{PDQ},0.000") == "vpdq"
    assert loaders.detect("a.csv", "signal_type,signal_value") == "csv"


def test_plain_list_blocks_are_the_records_row_by_row_reading_makes():
    text = (
        "signal_type,signal_value\n"
        + "".join(f"pdq,{os.urandom(32).hex()}\n" for _ in range(5))
        + f"pdq,{MD5}\n\nPDQ,{PDQ}\n"  # a bad row, a blank line: this block goes row by row
    )
    rows = list(loaders.read(io.StringIO(text), "csv", "f.csv"))
    blocks = list(loaders.read_blocks(io.StringIO(text), "auto", "f.csv", block_rows=5))
    assert isinstance(blocks[0], loaders.PlainRows) and len(blocks[0]) == 5
    first = blocks[0]
    as_records = [
        Record(first.signal_type, first.values[k * 32 : (k + 1) * 32], line=first.first_line + k)
        for k in range(len(first))
    ]
    assert as_records + blocks[1:] == rows
    assert [type(b) for b in blocks[1:]] == [Rejected, Record]


def test_plain_block_with_a_spaced_or_non_hex_value_goes_row_by_row():
    good = os.urandom(32).hex()
    for bad in (good[:10] + " " + good[11:], good[:-1] + "g", good[:-2] + "é"):
        text = "signal_type,signal_value\n" + f"pdq,{good}\n" * 3 + f"pdq,{bad}\n"
        blocks = list(loaders.read_blocks(io.StringIO(text), "csv", "f.csv", block_rows=10))
        assert [type(b) for b in blocks] == [Record] * 3 + [Rejected], bad
        assert blocks[3].line == 5


# Label values the key=value;... text cannot hold as they are, from HMA tags
# (%3B is a ';') and JSON lines, where labels are an object.
TRICKY_LABELS = {
    "group": "Al Qaeda; x",
    "outlet": " Amaq ",
    "note": "a=b;c=d",
    "path": "C:\\x\\;y\\",
    "quote": 'say "hi", ok',
    "json": '{"a": "b"}',
    "empty": "",
    "nbsp": "Al\u00a0Qaeda",
    "percent": "100%3B %25",
    "colon": "x:y",
    "ar": "الدولة الإسلامية",
    "tags": "video b a",
    "collab": " GIFCT",
    "category": "",
    "ideology": "Islamist; Salafi",
    "file_type": " image",
}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "hma", "tcap"])
@pytest.mark.parametrize(
    "labels",
    [
        TRICKY_LABELS,
        {"group": "Al Qaeda; x"},
        {"tags": "propaganda video", "group": "ISIS", "collab": "GIFCT"},
        {"ideology": "", "file_type": "video"},
        {"a": "x\\"},
    ],
    ids=["all", "semicolon", "gifct", "empty-column", "backslash-end"],
)
def test_any_label_text_round_trips_through_every_writer(fmt, labels):
    records = [
        Record("pdq", bytes.fromhex(PDQ), "a", labels),
        Record("md5", bytes.fromhex(MD5), "a", labels, deleted=True),
    ]
    out = io.StringIO()
    loaders.write(out, records, fmt)
    back, bad = read(out.getvalue(), fmt)
    assert not bad
    assert [r.labels for r in back] == [labels, labels]


def test_hma_tags_survive_every_format_and_back():
    tags = "group:Al%20Qaeda%3B%20x outlet:%20Amaq group2:a:b propaganda,video;new :odd"
    hma_file = f'signal_type,signal_str,collab,category,tags\npdq,{PDQ},GIFCT,terrorism,"{tags}"\n'
    (first,), bad = read(hma_file, "hma")
    assert not bad
    assert first.labels == {
        "group": "Al Qaeda; x",
        "outlet": " Amaq",
        "group2": "a:b",
        "tags": ":odd new propaganda video",
        "collab": "GIFCT",
        "category": "terrorism",
    }
    for fmt in ("csv", "tsv", "jsonl", "tcap", "hma"):
        out = io.StringIO()
        loaders.write(out, [first], fmt)
        (again,), bad = read(out.getvalue(), fmt)
        assert not bad and again.labels == first.labels, fmt
    out = io.StringIO()
    loaders.write(out, [first], "hma")
    assert out.getvalue().splitlines()[1].endswith(",,")  # all in tags and columns: no labels


def _old_parse_labels(text: str) -> dict[str, str]:
    """parse_labels before the JSON form (raises ValueError where it refused)."""
    out = {}
    for pair in text.split(";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(pair)
        out[key.strip()] = value.strip()
    return records.checked_labels(out)


def test_label_text_that_loaded_before_reads_the_same():
    for text, want in [
        ("group=ISIS;outlet=Amaq", {"group": "ISIS", "outlet": "Amaq"}),
        ("path=C:\\dir;b=x\\\\y", {"path": "C:\\dir", "b": "x\\\\y"}),
        ("a=x\\;b=y", {"a": "x\\", "b": "y"}),  # a backslash escapes nothing
        (" a = b=c ; ;", {"a": "b=c"}),
        ("a=", {"a": ""}),
        ("a={x}", {"a": "{x}"}),
    ]:
        assert records.parse_labels(text) == want == _old_parse_labels(text)
    # and every text of these characters that loaded before still does, the same
    rng = random.Random(7)
    loaded = 0
    for _ in range(20_000):
        text = "".join(rng.choice('ab=; \\{}":') for _ in range(rng.randint(0, 12)))
        try:
            before = _old_parse_labels(text)
        except (ValueError, records.RowError):
            continue
        loaded += 1
        assert records.parse_labels(text) == before, text
    assert loaded > 1000


@pytest.mark.parametrize(
    "text, reason",
    [
        ("novalue", "not key=value"),
        ("a=b;junk", "not key=value"),
        ('{"a": 1}', "JSON object of strings"),
        ('["a=b"]', "invalid label key"),
        ('{"a": "b"', "not a JSON object"),
        ('{"a": "b"} x', "not a JSON object"),
        ('{"1bad": "x"}', "invalid label key"),
        ('{"a": "\\n"}', "no control characters"),
    ],
)
def test_malformed_label_text_is_rejected(text, reason):
    cell = '"' + text.replace('"', '""') + '"'
    good, bad = read(f"signal_type,signal_value,labels\npdq,{PDQ},{cell}\n", "csv")
    assert not good and reason in bad[0].reason


def test_label_text_stays_key_value_unless_a_value_needs_json():
    assert records.format_labels({"b": "x y", "a": "C:\\x", "c": "p=q"}) == "a=C:\\x;b=x y;c=p=q"
    assert records.format_labels({"a": "x;y"}) == '{"a": "x;y"}'
    assert records.format_labels({"a": " x"}) == '{"a": " x"}'


LONG_PRINT = bytes(range(256)) * 2  # 128 Chromaprint elements: a 1,036-character auto-name


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "hma", "tcap"])
def test_auto_named_entry_with_a_long_value_round_trips(fmt):
    auto = f"chromaprint:{LONG_PRINT.hex()}"
    records_out = [
        Record("chromaprint", LONG_PRINT, auto, {"group": "ISIS"}),
        Record("chromaprint", LONG_PRINT[:-4], auto[:-8], {}, deleted=True),
        Record("pdq", bytes.fromhex(PDQ), f"pdq:{PDQ}", {}),  # short: written as it is
    ]
    assert len(auto) > 512
    out = io.StringIO()
    loaders.write(out, records_out, fmt)
    back, bad = read(out.getvalue(), fmt)
    assert not bad
    assert [(r.entry_name, r.deleted) for r in back] == [
        (auto, False),
        (auto[:-8], True),
        (f"pdq:{PDQ}", False),
    ]
    assert back[2].entry == f"pdq:{PDQ}"


def test_vpdq_file_names_are_distinct_and_give_the_entry_name_back(tmp_path):
    names = [
        "2015/clip.mp4",
        "2015_clip.mp4",
        "2015 clip.mp4",
        "2015%2Fclip.mp4",
        "release.mp4",
        ".hidden",
        "..",
        "a~b",
        "إصدار ١.mp4",
        "x" * 500 + "/1",
        "x" * 500 + "/2",
    ]
    files = [loaders.vpdq_file_name(n) for n in names]
    assert len(set(files)) == len(names)
    assert files[0] == "2015%2Fclip.mp4.txt" and files[4] == "release.mp4.txt"
    for name, file in zip(names, files, strict=True):
        assert len(file.encode()) <= 255 and "/" not in file and not file.startswith(".")
        frame = Record("pdq", bytes.fromhex(PDQ), name, None, variant="frame:0", position=0.0)
        with open(tmp_path / file, "w", encoding="utf-8") as f:
            loaders.write(f, [frame], "vpdq")
        (back,) = loaders.read_path(str(tmp_path / file), "vpdq")
        if len(name) < 500:
            assert back.entry == name
        else:  # too long for a file name: cut, with a hash of the whole
            assert back.entry.startswith("x" * 100) and "~" in back.entry
    assert len(os.listdir(tmp_path)) == len(names)


def test_vpdq_file_name_with_a_percent_that_decodes_to_no_name_is_kept():
    assert vpdq.entry_for("/x/clip%0A.txt") == "clip%0A"  # a control character
    assert vpdq.entry_for("/x/clip%ff.txt") == "clip%ff"  # not UTF-8
    assert vpdq.entry_for("/x/100%.txt") == "100%"
    assert vpdq.entry_for("/x/release.mp4.txt") == "release.mp4"


def _te_vpdq(frames) -> str:
    """A vpdq signal_str as python-threatexchange writes it (VpdqCompactFeature:
    seconds with three significant digits)."""
    import json

    return json.dumps([f"{h},{q},{t:.3}" for h, q, t in frames])


def test_hma_vpdq_rows_are_videos_and_are_written_back_as_one_row():
    import csv
    import json

    video = [(PDQ, 100, 0.0), ("f" * 64, 87, 1.0), ("e" * 64, 12, 2.5)]
    text = "signal_type,signal_str,collab,category,tags\n" + "".join(
        f'vpdq,"{_te_vpdq(frames).replace(chr(34), chr(34) * 2)}",GIFCT,terrorism,group:ISIS\n'
        for frames in (video, video[:2])
    )
    good, bad = read(text + 'vpdq,"[]",,,\n' + f'vpdq,"[""{PDQ},101,0""]",,,\n', "hma")
    assert [(r.line, r.reason) for r in bad] == [
        (4, "vpdq signal_str must be a non-empty JSON list of frames"),
        (5, "vpdq frame 0: quality must be within 0..100"),
    ]
    first = [g for g in good if g.line == 2]
    assert [(g.signal_type, g.signal_value.hex(), g.quality, g.variant, g.position)
            for g in first] == [("pdq", h, q, f"frame:{n}", t)
                                for n, (h, q, t) in enumerate(video)]  # fmt: skip
    names = {g.line: g.entry_name for g in good}
    assert names[2].startswith("vpdq:") and names[3].startswith("vpdq:")
    assert names[2] != names[3]  # another video
    assert read(text, "hma")[0][0].entry_name == names[2]  # the same on every load
    assert first[0].labels["group"] == "ISIS" and first[0].labels["collab"] == "GIFCT"

    # written back: one vpdq row a video, which reads back the same
    out = io.StringIO()
    assert loaders.write(out, good, "hma") == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [row["signal_type"] for row in rows] == ["vpdq", "vpdq"]
    assert json.loads(rows[0]["signal_str"])[1] == f"{'f' * 64},87,1.000"
    again, bad = read(out.getvalue(), "hma")
    assert bad == [] and [
        (g.entry_name, g.signal_value, g.quality, g.variant, g.position, g.labels) for g in again
    ] == [(g.entry_name, g.signal_value, g.quality, g.variant, g.position, g.labels) for g in good]

    # a tombstone of a video by its frames or by its name
    gone, bad = read(
        "signal_type,signal_str,entry,deleted\n"
        f'vpdq,"{_te_vpdq(video).replace(chr(34), chr(34) * 2)}",,true\nvpdq,,clip-7,true\n',
        "hma",
    )
    assert bad == [] and [(g.entry_name, g.deleted, g.signal_value) for g in gone] == [
        (names[2], True, b""),
        ("clip-7", True, b""),
    ]
