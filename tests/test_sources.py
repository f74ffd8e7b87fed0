"""The input side on real files: pyarrow reads every one of them, nothing is mocked."""

from __future__ import annotations

import gzip
import io
import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from auditor.callids import is_valid_call_id
from auditor.idset import CompactIdSet
from auditor.sources import (
    InputError,
    InputFile,
    estimate_rows,
    iter_id_batches,
    open_inputs,
    unique_ids,
)


def call_id(n: int) -> str:
    return f"c-{n:08x}-4f2e-9a1b-{n * 7919 % 0xFFFFFFFFFFFF:012x}"


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def write_parquet(tmp_path: Path, name: str, table: pa.Table, **options: object) -> str:
    path = str(tmp_path / name)
    pq.write_table(table, path, **options)
    return path


def read_ids(paths: list[str], id_column: str | None = None) -> list[str]:
    return read_ids_from(open_inputs(paths, id_column))


def read_ids_from(inputs: list[InputFile]) -> list[str]:
    return [value for batch in iter_id_batches(inputs) for value in batch]


def preflight_error(paths: list[str], id_column: str | None = None) -> str:
    with pytest.raises(InputError) as caught:
        open_inputs(paths, id_column)
    return one_line(caught.value, paths[0])


def one_line(error: InputError, path: str) -> str:
    """The error contract: a single line starting with the file's name."""
    message = str(error)
    assert "\n" not in message and "\r" not in message
    assert message.startswith("<stdin>: " if path == "-" else f"{path}: ")
    return message


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.BytesIO]:
    """Replace stdin with an in-memory byte stream the test fills before reading."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
    yield raw


def feed(stdin: io.BytesIO, data: bytes) -> None:
    stdin.write(data)
    stdin.seek(0)


# -- reading CSV -------------------------------------------------------------------------------


def test_csv_values_are_trimmed_blanks_skipped_order_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "calls.csv",
        b"callId,startTime\n  c-1 ,x\n\n\nc-2\t,y\n,z\n   ,w\nc-1,again\nnot an id,v\n",
    )
    inputs = open_inputs([path], None)
    assert inputs == [InputFile(path, "csv", "callId")]
    # Duplicates and invalid ids are passed on: dedupe and validation happen downstream.
    assert read_ids([path]) == ["c-1", "c-2", "c-1", "not an id"]


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (b"id,call_id,CALLID,other", "CALLID"),  # callId first, in any case
        (b"x,Call_Id,ID", "Call_Id"),  # then call_id
        (b"x,Id", "Id"),  # then id
        (b"whatever", "whatever"),  # else the only column
    ],
)
def test_id_column_detection_order(tmp_path: Path, header: bytes, chosen: str) -> None:
    columns = header.count(b",") + 1
    row = b",".join([b"c-value"] * columns)
    path = write(tmp_path, "calls.csv", header + b"\n" + row + b"\n")
    assert open_inputs([path], None)[0].id_column == chosen
    assert read_ids([path]) == ["c-value"]


def test_id_column_option_picks_that_column(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", b"callId,legId\nc-a,c-leg\n")
    assert read_ids([path], id_column="legId") == ["c-leg"]


def test_bom_crlf_quotes_and_extra_columns(tmp_path: Path) -> None:
    data = (
        b'\xef\xbb\xbf"callId","note","n"\r\n'
        b'"c-1","has, a comma",1\r\n'
        b'" c-2 ","spans\r\ntwo lines, and ""quotes""",2\r\n'
        b"c-3,,3\r\n"
    )
    path = write(tmp_path, "calls.csv", data)
    assert open_inputs([path], None)[0].id_column == "callId"  # the BOM is not in the name
    assert read_ids([path]) == ["c-1", "c-2", "c-3"]  # no \r, no quotes, nothing lost


def test_header_only_is_zero_ids_not_an_error(tmp_path: Path) -> None:
    for name, data in [("a.csv", b"callId\n"), ("b.csv", b"callId"), ("c.csv", b"callId,x\r\n")]:
        path = write(tmp_path, name, data)
        assert read_ids([path]) == []
        assert estimate_rows(open_inputs([path], None)) == 0
    gz = write(tmp_path, "d.csv.gz", gzip.compress(b"callId\n"))
    assert read_ids([gz]) == []


def test_non_utf8_id_survives_as_an_invalid_value(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", b"callId,note\nc-1,\xe9t\xe9\nc-\xff\xfe2,x\nc-3,y\n")
    ids = read_ids([path])
    assert ids == ["c-1", "c-\ufffd\ufffd2", "c-3"]  # bad bytes in another column don't matter
    assert [is_valid_call_id(value) for value in ids] == [True, False, True]


def test_single_column_without_header_reads_the_first_line_as_an_id(tmp_path: Path) -> None:
    path = write(tmp_path, "ids.csv", b"c-first\nc-second\n")
    assert open_inputs([path], None)[0].has_header is False
    assert read_ids([path]) == ["c-first", "c-second"]
    # With a real header name the first line is a header, as usual.
    named = write(tmp_path, "named.csv", b"calls\nc-first\n")
    assert read_ids([named]) == ["c-first"]


def test_gzip_csv_including_several_members(tmp_path: Path) -> None:
    data = gzip.compress(b"call_id\nc-1\n") + gzip.compress(b"c-2\nc-3\n")  # `cat a.gz b.gz`
    path = write(tmp_path, "calls.csv.gz", data)
    assert open_inputs([path], None) == [InputFile(path, "csv.gz", "call_id")]
    assert read_ids([path]) == ["c-1", "c-2", "c-3"]


def test_uppercase_extensions_are_known(tmp_path: Path) -> None:
    path = write(tmp_path, "CALLS.CSV", b"callId\nc-1\n")
    assert read_ids([path]) == ["c-1"]


# -- reading Parquet ---------------------------------------------------------------------------


def test_parquet_reads_only_the_id_column_in_batches(tmp_path: Path) -> None:
    ids = [call_id(n) for n in range(2500)]
    table = pa.table({"n": list(range(2500)), "callId": [f" {v} " for v in ids]})
    path = write_parquet(tmp_path, "calls.parquet", table, row_group_size=700)
    inputs = open_inputs([path], None)
    assert inputs == [InputFile(path, "parquet", "callId")]
    batches = list(iter_id_batches(inputs, batch_rows=1000))
    assert all(0 < len(batch) <= 1000 for batch in batches)
    assert [v for batch in batches for v in batch] == ids
    assert estimate_rows(inputs) == 2500


@pytest.mark.parametrize(
    "column",
    [
        pa.array(["c-1", None, " ", "c-2"], pa.large_string()),
        pa.array(["c-1", None, " ", "c-2"], pa.string()).dictionary_encode(),
        pa.array(["c-1", None, " ", "c-2"], pa.string_view()),
        pa.array([b"c-1", None, b" ", b"c-2"], pa.binary()),
    ],
    ids=["large_string", "dictionary", "string_view", "binary"],
)
def test_parquet_string_like_columns(tmp_path: Path, column: pa.Array) -> None:
    path = write_parquet(tmp_path, "calls.pq", pa.table({"id": column}))
    assert read_ids([path]) == ["c-1", "c-2"]


def test_parquet_binary_column_with_bad_utf8(tmp_path: Path) -> None:
    column = pa.array([b"c-1", b"c-\xff", b"c-3"], pa.binary())
    path = write_parquet(tmp_path, "calls.parquet", pa.table({"callId": column}))
    assert read_ids([path]) == ["c-1", "c-\ufffd", "c-3"]


def test_parquet_id_column_of_another_type_is_refused(tmp_path: Path) -> None:
    path = write_parquet(tmp_path, "calls.parquet", pa.table({"callId": [1, 2]}))
    message = preflight_error([path])
    assert "'callId'" in message and "int64" in message


# -- several inputs, stdin, pipes --------------------------------------------------------------


def test_inputs_are_read_in_order(tmp_path: Path) -> None:
    csv = write(tmp_path, "a.csv", b"callId\nc-1\nc-2\n")
    gz = write(tmp_path, "b.csv.gz", gzip.compress(b"callId\nc-3\n"))
    parquet = write_parquet(tmp_path, "c.parquet", pa.table({"callId": ["c-4", "c-1"]}))
    assert read_ids([csv, gz, parquet]) == ["c-1", "c-2", "c-3", "c-4", "c-1"]


def test_batches_are_bounded_and_never_empty(tmp_path: Path) -> None:
    lines = b"".join(b"c-%d\n\n" % n for n in range(5000))  # blank lines in between
    path = write(tmp_path, "calls.csv", b"callId\n" + lines)
    batches = list(iter_id_batches(open_inputs([path], None), batch_rows=1000))
    assert all(0 < len(batch) <= 1000 for batch in batches)
    assert [v for batch in batches for v in batch] == [f"c-{n}" for n in range(5000)]


def test_stdin_header_is_peeked_without_losing_data(stdin: io.BytesIO) -> None:
    # Larger than one CSV block, so the replayed prefix and the rest of stdin must join exactly.
    ids = [call_id(n) for n in range(20000)]
    feed(stdin, ("callId,n\n" + "".join(f"{v},{n}\n" for n, v in enumerate(ids))).encode())
    inputs = open_inputs(["-"], None)
    assert inputs == [InputFile("-", "csv", "callId")]
    assert estimate_rows(inputs) is None
    assert read_ids_from(inputs) == ids
    with pytest.raises(InputError, match="already read"):
        next(iter_id_batches(inputs))


def test_stdin_twice_is_refused(stdin: io.BytesIO) -> None:
    feed(stdin, b"callId\nc-1\n")
    message = preflight_error(["-", "-"])
    assert "more than once" in message


def test_stdin_that_is_a_terminal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO()))
    assert "terminal" in preflight_error(["-"])


def test_stdin_with_gzip_bytes_gets_a_hint(stdin: io.BytesIO) -> None:
    feed(stdin, gzip.compress(b"callId\nc-1\n"))
    assert "gunzip" in preflight_error(["-"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_read_once_like_stdin(tmp_path: Path) -> None:
    fifo = str(tmp_path / "calls.csv")
    os.mkfifo(fifo)
    data = b"callId\n" + b"".join(b"c-%d\n" % n for n in range(30000))

    def writer() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(data)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert read_ids([fifo]) == [f"c-{n}" for n in range(30000)]
    finally:
        thread.join(timeout=10)


SAMPLES = Path(__file__).resolve().parent.parent / "sample_inputs"


@pytest.mark.parametrize("name", ["mixed.csv", "mixed.csv.gz", "mixed.parquet"])
def test_sample_inputs_read_as_their_readme_says(name: str) -> None:
    batches = iter_id_batches(open_inputs([str(SAMPLES / name)], None))
    read = [v for batch in batches for v in batch]
    distinct = [v for batch in unique_ids([read], CompactIdSet()) for v in batch]
    valid = [v for v in distinct if is_valid_call_id(v)]
    assert (len(read), len(distinct), len(valid)) == (12, 11, 4)
    assert "c-2d6e5b1f-8a6f0c3e-6f1a-4b9e-9d2c-0e4a7f1b3c55" in valid  # trimmed
    assert "c-../../admin" in distinct


# -- bad input: one line, naming the file -------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.csv")
    assert preflight_error([path]) == f"{path}: no such file"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dataset.parquet").mkdir()
    path = str(tmp_path / "dataset.parquet")
    assert "is a directory" in preflight_error([path])


def test_unknown_extension(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.txt", b"callId\nc-1\n")
    assert "unknown input format" in preflight_error([path])


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", b"callId\nc-1\n")
    os.chmod(path, 0)
    assert preflight_error([path]) == f"{path}: permission denied"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("empty.csv", b""),
        ("blank.csv", b"\n\r\n  \n"),
        ("empty.csv.gz", b""),
        ("empty-inside.csv.gz", gzip.compress(b"")),
    ],
)
def test_empty_file(tmp_path: Path, name: str, data: bytes) -> None:
    path = write(tmp_path, name, data)
    assert "empty file" in preflight_error([path])


def test_no_detectable_id_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", b"from,to,startTime\n+1,+2,now\n")
    message = preflight_error([path])
    assert "no id column" in message and "--id-column" in message
    assert "'from', 'to', 'startTime'" in message


def test_wrong_id_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", b"callId,to\nc-1,+2\n")
    message = preflight_error([path], id_column="CallID")
    assert "no column 'CallID'" in message and "did you mean 'callId'?" in message
    assert "'callId', 'to'" in message
    parquet = write_parquet(tmp_path, "calls.parquet", pa.table({"callId": ["c-1"]}))
    assert "no column 'x'" in preflight_error([parquet], id_column="x")


def test_ambiguous_or_repeated_id_column(tmp_path: Path) -> None:
    two = write(tmp_path, "two.csv", b"Id,ID\nc-1,c-2\n")
    assert "several id columns" in preflight_error([two])
    repeated = write(tmp_path, "repeated.csv", b"legId,x,legId\nc-1,1,c-2\n")
    assert "appears 2 times" in preflight_error([repeated], id_column="legId")


def test_ragged_row_is_an_error_naming_the_row(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", b"callId,x\nc-1,1\nc-2\n")
    message = preflight_error([path])
    assert "Expected 2 columns, got 1" in message and "c-2" in message


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"PAR1\x00\x00", "Parquet"),
        (b"PK\x03\x04rest", "zip"),
        ("callId\nc-1\n".encode("utf-16"), "UTF-16"),
        (b"callId;startTime\nc-1;now\n", "separated"),
    ],
)
def test_csv_that_is_something_else(tmp_path: Path, data: bytes, hint: str) -> None:
    path = write(tmp_path, "calls.csv", data)
    assert hint in preflight_error([path])


def test_non_utf8_header_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv", b"callId,num\xe9ro\nc-1,1\n")  # Latin-1
    assert "header row is not UTF-8" in preflight_error([path])


def test_corrupt_gzip_start_fails_the_preflight(tmp_path: Path) -> None:
    path = write(tmp_path, "calls.csv.gz", b"callId\nc-1\n")  # not compressed at all
    assert "corrupt or truncated gzip data" in preflight_error([path])


def big_csv(rows: int, seed: int = 1) -> tuple[bytes, list[str]]:
    """A two-column CSV of *rows* random ids (~42 bytes a row), and the ids."""
    rnd = random.Random(seed)
    ids = [f"c-{rnd.getrandbits(128):032x}" for _ in range(rows)]
    body = "".join(f"{value},{n}\n" for n, value in enumerate(ids))
    return ("callId,n\n" + body).encode(), ids


@pytest.mark.parametrize("damage", ["truncated", "bad checksum"])
def test_corrupt_gzip_later_fails_mid_stream(tmp_path: Path, damage: str) -> None:
    data, ids = big_csv(60000)
    packed = bytearray(gzip.compress(data))
    if damage == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        packed[-6] ^= 0xFF  # the CRC-32 in the trailer
    path = write(tmp_path, "calls.csv.gz", bytes(packed))
    inputs = open_inputs([path], None)  # the start is fine: the pre-flight passes
    got: list[str] = []
    with pytest.raises(InputError) as caught:
        for batch in iter_id_batches(inputs):
            got.extend(batch)
    message = one_line(caught.value, path)
    assert "corrupt or truncated gzip data" in message
    # Rows before the damage come out (all but pyarrow's last undecoded chunk), and never a
    # row cut short: what came out is exactly the start of the real ids.
    assert f"after {len(got):,} rows" in message
    assert len(got) > (20000 if damage == "truncated" else 50000)
    assert got == ids[: len(got)]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("zero.parquet", b""),
        ("junk.parquet", b"this is not a parquet file at all"),
        ("csv.parquet", b"callId\nc-1\n"),
    ],
)
def test_corrupt_parquet_fails_the_preflight(tmp_path: Path, name: str, data: bytes) -> None:
    path = write(tmp_path, name, data)
    assert "not a readable Parquet file" in preflight_error([path])


def test_truncated_parquet_fails_the_preflight(tmp_path: Path) -> None:
    good = write_parquet(tmp_path, "good.parquet", pa.table({"callId": ["c-1"] * 1000}))
    data = Path(good).read_bytes()
    path = write(tmp_path, "cut.parquet", data[: len(data) // 2])
    assert "not a readable Parquet file" in preflight_error([path])


@pytest.mark.parametrize(("damage", "checksums"), [("page header", False), ("page data", True)])
def test_parquet_damaged_in_a_later_row_group_fails_mid_stream(
    tmp_path: Path, damage: str, checksums: bool
) -> None:
    rnd = random.Random(3)
    table = pa.table({"callId": [f"c-{rnd.getrandbits(128):032x}" for _ in range(40000)]})
    path = write_parquet(
        tmp_path, "calls.parquet", table, row_group_size=10000, write_page_checksum=checksums
    )
    last = pq.ParquetFile(path).metadata.row_group(3).column(0)
    start = last.dictionary_page_offset or last.data_page_offset
    if damage == "page data":
        start += 100  # past the page header: only the page checksum can tell
    data = bytearray(Path(path).read_bytes())
    for i in range(start, start + 16):
        data[i] ^= 0x5A
    Path(path).write_bytes(bytes(data))
    inputs = open_inputs([path], None)  # footer and schema are intact
    got: list[str] = []
    with pytest.raises(InputError) as caught:
        for batch in iter_id_batches(inputs, batch_rows=5000):
            got.extend(batch)
    assert "after 30,000 rows" in one_line(caught.value, path)
    assert got == table.column("callId").to_pylist()[:30000]


def test_first_bad_input_stops_the_preflight(tmp_path: Path) -> None:
    good = write(tmp_path, "good.csv", b"callId\nc-1\n")
    missing = str(tmp_path / "missing.csv")
    with pytest.raises(InputError) as caught:
        open_inputs([good, missing], None)
    assert one_line(caught.value, missing) == f"{missing}: no such file"


def test_long_and_multiline_problems_are_one_short_line() -> None:
    error = InputError("a.csv", "first line\nsecond line " + "x" * 1000)
    assert str(error).startswith("a.csv: first line second line xxx")
    assert "\n" not in str(error) and len(str(error)) < 400


# -- dedupe ------------------------------------------------------------------------------------


def test_unique_ids_drops_repeats_within_and_across_batches() -> None:
    seen = CompactIdSet()
    seen.add("c-done")  # finished by an earlier run
    batches = [["c-1", "c-2", "c-1"], ["c-2", "c-done"], ["c-3", "c-1", "c-3"]]
    assert list(unique_ids(iter(batches), seen)) == [["c-1", "c-2"], ["c-3"]]
    assert len(seen) == 4


def test_dedupe_over_a_real_file(tmp_path: Path) -> None:
    ids = [call_id(n % 1000) for n in range(3000)]  # every id three times
    path = write(tmp_path, "calls.csv", ("callId\n" + "\n".join(ids) + "\n").encode())
    batches = iter_id_batches(open_inputs([path], None), batch_rows=400)
    unique = [v for batch in unique_ids(batches, CompactIdSet()) for v in batch]
    assert unique == [call_id(n) for n in range(1000)]


# -- streaming: memory does not follow the input -----------------------------------------------


def peak_arrow_bytes(batches: Iterator[list[str]]) -> tuple[int, int]:
    """(ids read, the most memory pyarrow held at any point while reading them)."""
    count, peak, before = 0, 0, pa.total_allocated_bytes()
    for batch in batches:
        count += len(batch)
        peak = max(peak, pa.total_allocated_bytes() - before)
    return count, peak


def test_csv_is_streamed(tmp_path: Path) -> None:
    data, _ = big_csv(300_000)  # 12.5 MB
    path = write(tmp_path, "calls.csv", data)
    count, peak = peak_arrow_bytes(iter_id_batches(open_inputs([path], None)))
    assert count == 300_000
    assert peak < len(data) / 4  # a few blocks of 256 KiB in flight, whatever the file size


def test_parquet_is_streamed_one_row_group_at_a_time(tmp_path: Path) -> None:
    rnd = random.Random(5)
    table = pa.table({"callId": [f"c-{rnd.getrandbits(256):064x}" for _ in range(200_000)]})
    path = write_parquet(tmp_path, "calls.parquet", table, row_group_size=10_000)
    size = os.path.getsize(path)  # ~14 MB: random ids do not compress
    del table
    count, peak = peak_arrow_bytes(iter_id_batches(open_inputs([path], None), batch_rows=10_000))
    assert count == 200_000
    assert peak < size / 2  # caching every row group read (pre_buffer) would pass the file size
