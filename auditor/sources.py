"""The input side: stream call ids out of CSV, gzip'd CSV and Parquet files, or CSV on stdin.

Nothing here grows with the input: CSV goes through pyarrow's streaming reader (a 256 KiB
block at a time) and Parquet through ``ParquetFile.iter_batches`` (a row group at a time),
reading only the id column. The API is synchronous because pyarrow blocks; the pipeline runs
it in a thread.

:func:`open_inputs` is the pre-flight: it checks every input (exists, is a file, has a known
format, has a readable header or schema, has an id column of a string type) before the first
request, so a bad input exits 2 having touched nothing. Problems only visible later (a gzip
stream cut short half way) raise :class:`InputError` from :func:`iter_id_batches`.

Id column: ``--id-column NAME`` if given (exact name), else ``callId``, ``call_id`` or ``id``
(any case, in that order of preference), else the only column. Each value has its surrounding
whitespace removed; blank values are skipped; everything else is passed on as it is, to be
checked with ``is_valid_call_id`` downstream (invalid ones become ``invalid_id`` rows).

Outcomes for bad input (each is tested in ``tests/test_sources.py``). An error is an
:class:`InputError` whose message is one line, ``<file>: <problem>``:

================================  ===============================================================
missing file, directory,          error (before any request)
unreadable file
unknown extension                 error naming the formats known (a pipe: use ``-``)
empty file (0 bytes, or only      error "empty file"
blank lines)
header only                       **not** an error: zero ids (a day without calls is normal)
no detectable id column           error listing the columns found, suggesting ``--id-column``
wrong ``--id-column``             error listing the columns found
id column named twice in header   error
single column whose header is     the file has no header: that first line is read as an id
itself a valid call id
non-UTF-8 bytes in an id          the row is kept: decoded with U+FFFD replacement characters,
                                  so it becomes an ``invalid_id`` row, never a request
non-UTF-8 bytes in the header     error: save the file as UTF-8
UTF-8 BOM, CRLF line ends,        handled (BOM dropped, CRLF and blank lines ignored, RFC 4180
quoted fields, blank lines,       quoting, including newlines inside quotes; other columns
extra columns                     are never converted, so their content does not matter)
row with too many/few fields      error naming the row, from pyarrow's parser
a row longer than 256 KiB         error, from pyarrow's parser
gzip, Parquet, zip or UTF-16      error saying what the file looks like and what to do
content in a ``.csv`` or on stdin
``;`` or tab separated header     error: only comma CSV is read
corrupt ``.gz``                   error; before any request if the first 256 KiB are bad, else
                                  mid-stream, after handing out the rows before the damage
                                  (less pyarrow's last undecoded chunk), never a cut-short row
corrupt Parquet                   error; footer/schema damage before any request, page damage
                                  mid-stream (damage inside compressed page data is only seen
                                  if the writer stored page checksums, which are verified)
Parquet id column not a string    error naming its type; string, large_string, string_view and
                                  dictionary-of-string are read; binary is read like non-UTF-8
                                  CSV (decoded with replacement)
``-`` given twice                 error (stdin can only be read once)
================================  ===============================================================
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from auditor.callids import is_valid_call_id
from auditor.idset import CompactIdSet

STDIN = "-"
ID_COLUMN_CANDIDATES = ("callId", "call_id", "id")
# pyarrow parses CSV one block at a time; the header (and any single row) must fit in a block.
# Its working memory is ~36 blocks (readahead and parse buffers): 256 KiB blocks keep that near
# 10 MB, at the same speed as the 1 MiB default (which costs ~40 MB).
CSV_BLOCK_BYTES = 1 << 18
_SUFFIXES = ((".csv.gz", "csv.gz"), (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet"))
_MAX_PROBLEM_CHARS = 300
_MAX_COLUMNS_LISTED = 20
_NO_HEADER = "(no header)"
# First bytes of things that are not CSV text, and what to tell the user.
_MAGIC = (
    (b"\x1f\x8b", "looks gzip-compressed: name it .csv.gz, or pipe it through gunzip"),
    (b"PAR1", "looks like a Parquet file: give it a .parquet name"),
    (b"PK\x03\x04", "looks like a zip archive (an Excel .xlsx?): export it as CSV"),
    (b"\xff\xfe", "is UTF-16 text: save it as UTF-8 CSV"),
    (b"\xfe\xff", "is UTF-16 text: save it as UTF-8 CSV"),
)


class InputError(Exception):
    """An input that cannot be read. ``str(error)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = " ".join(problem.split())[:_MAX_PROBLEM_CHARS]
        super().__init__(f"{_display(path)}: {self.problem}")


@dataclass
class _OneShot:
    """Stdin or a pipe: the stream, and the bytes the pre-flight took from it, to replay."""

    stream: BinaryIO
    prefix: bytes
    consumed: bool = False


@dataclass(frozen=True)
class InputFile:
    """One pre-flighted input: where it is, how to read it, and which column holds the ids."""

    path: str  # "-" for stdin
    format: str  # "csv" | "csv.gz" | "parquet"
    id_column: str  # the resolved column name ("(no header)" for a headerless one-column CSV)
    has_header: bool = True
    # Stdin and pipes cannot be reopened: the bytes read by the pre-flight are kept and replayed.
    _once: _OneShot | None = field(default=None, repr=False, compare=False)


# -- pre-flight ---------------------------------------------------------------------------------


def open_inputs(paths: Sequence[str], id_column: str | None) -> list[InputFile]:
    """Check every input and resolve its id column, without making any request.

    Raises :class:`InputError` for the first input that cannot be used.
    """
    if list(paths).count(STDIN) > 1:
        raise InputError(STDIN, "stdin ('-') is given more than once; it can only be read once")
    inputs: list[InputFile] = []
    try:
        for path in paths:
            inputs.append(_open_input(path, id_column))
    except InputError:
        for inp in inputs:  # pipes opened for the inputs that passed (never stdin itself)
            if inp._once is not None and inp.path != STDIN:
                inp._once.stream.close()
        raise
    return inputs


def _open_input(path: str, id_column: str | None) -> InputFile:
    once: _OneShot | None = None
    if path == STDIN:
        fmt, once = "csv", _OneShot(_stdin(), b"")
    else:
        regular = stat.S_ISREG(_stat(path).st_mode)
        fmt = _format_of(path)
        if fmt == "parquet":
            return _open_parquet(path, id_column, regular)
        # A named pipe or device can be read only once, like stdin.
        once = None if regular else _OneShot(_open_binary(path), b"")
    names, prefix = _csv_header(path, fmt, once)
    if once is not None:
        once.prefix = prefix
    resolved = _resolve_column(path, names, id_column)
    if resolved is None:  # a single column whose "header" is a call id: there is no header
        return InputFile(path, fmt, _NO_HEADER, has_header=False, _once=once)
    return InputFile(path, fmt, resolved, _once=once)


def _format_of(path: str) -> str:
    lowered = path.lower()
    for suffix, fmt in _SUFFIXES:
        if lowered.endswith(suffix):
            return fmt
    raise InputError(
        path,
        "unknown input format: expected a .csv, .csv.gz, .parquet or .pq file "
        "(for a pipe, use '-' and send it to stdin)",
    )


def _stat(path: str) -> os.stat_result:
    try:
        result = os.stat(path)
    except OSError as exc:
        raise InputError(path, _os_problem(exc)) from exc
    if stat.S_ISDIR(result.st_mode):
        raise InputError(path, "is a directory, not a file (pass the files inside it)")
    return result


def _open_binary(path: str) -> BinaryIO:
    _stat(path)
    try:
        return open(path, "rb")  # the caller closes it
    except OSError as exc:
        raise InputError(path, _os_problem(exc)) from exc


def _stdin() -> BinaryIO:
    stdin = sys.stdin
    if stdin is None:
        raise InputError(STDIN, "there is no stdin to read from")
    if stdin.isatty():
        raise InputError(STDIN, "'-' reads CSV from stdin, but stdin is a terminal; pipe a file in")
    return stdin.buffer


def _csv_header(path: str, fmt: str, once: _OneShot | None) -> tuple[list[str], bytes]:
    """The header's column names, and (for a one-shot stream) every byte read to find them.

    pyarrow only ever sees a copy of the first block here: its reader reads ahead in a
    background thread, and on the live stream that would consume (and lose) stdin data, or
    report damage from further down the file as a pre-flight error.
    """
    stream = once.stream if once is not None else _open_binary(path)
    recorder = _Recorder(stream)
    try:
        first = _Chain(_decompressed(recorder, fmt)).read(CSV_BLOCK_BYTES)
        for magic, problem in _MAGIC:
            if first.startswith(magic):
                raise InputError(path, problem)
        if len(first) < CSV_BLOCK_BYTES:  # the whole file: see _CsvFeed on the final newline
            first += b"\n"
        else:  # cut the partial last row, which pyarrow would otherwise parse as a short row
            first = first[: first.rfind(b"\n") + 1] or first
        reader = pcsv.open_csv(
            pa.BufferReader(first),
            read_options=pcsv.ReadOptions(block_size=len(first), use_threads=False),
            parse_options=_PARSE_OPTIONS,
        )
        names: list[str] = reader.schema.names
        reader.close()
    except UnicodeDecodeError as exc:  # pyarrow decodes column names strictly
        raise InputError(path, "the header row is not UTF-8 text; save the file as UTF-8") from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(path, _read_problem(exc, fmt)) from exc
    finally:
        if once is None:
            stream.close()
    if all(not name.strip() for name in names):  # a line of spaces: pyarrow only skips empty ones
        raise InputError(path, "empty file (no header row, only blank lines)")
    if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
        raise InputError(path, "the header looks ';' or tab separated; only comma CSV is read")
    return names, recorder.recorded()


def _open_parquet(path: str, id_column: str | None, regular: bool) -> InputFile:
    if not regular:
        raise InputError(path, "a Parquet input must be a regular file (not a pipe)")
    _open_binary(path).close()  # readable? (gives a plain "permission denied")
    try:
        with pq.ParquetFile(path) as parquet:
            schema = parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise InputError(path, f"not a readable Parquet file: {exc}") from exc
    resolved = _resolve_column(path, schema.names, id_column, headerless_ok=False)
    assert resolved is not None
    kind = schema.field(resolved).type
    if not _is_text(kind):
        raise InputError(path, f"id column {resolved!r} has type {kind}; it must hold strings")
    return InputFile(path, "parquet", resolved)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _resolve_column(
    path: str, names: Sequence[str], wanted: str | None, *, headerless_ok: bool = True
) -> str | None:
    """The id column's name, or None for a one-column CSV whose first line is an id, not a name."""
    if wanted is not None:
        if wanted not in names:
            hint = [n for n in names if n.casefold() == wanted.casefold()]
            maybe = f" (did you mean {hint[0]!r}?)" if len(hint) == 1 else ""
            raise InputError(path, f"no column {wanted!r}{maybe}; {_columns(names)}")
        chosen = wanted
    else:
        for candidate in ID_COLUMN_CANDIDATES:
            matches = [n for n in names if n.casefold() == candidate.casefold()]
            if len(matches) > 1:
                raise InputError(path, f"several id columns {matches}; choose with --id-column")
            if matches:
                chosen = matches[0]
                break
        else:
            if len(names) != 1:
                raise InputError(
                    path,
                    "no id column: expected callId, call_id or id (any case), or a single "
                    f"column; {_columns(names)}; choose one with --id-column",
                )
            chosen = names[0]
            if headerless_ok and is_valid_call_id(chosen.strip()):
                return None
    if names.count(chosen) > 1:
        raise InputError(path, f"column {chosen!r} appears {names.count(chosen)} times")
    return chosen


def _columns(names: Sequence[str]) -> str:
    if not names:
        return "the file has no columns"
    shown = ", ".join(repr(n) for n in names[:_MAX_COLUMNS_LISTED])
    more = len(names) - _MAX_COLUMNS_LISTED
    return f"columns found: {shown}" + (f" and {more} more" if more > 0 else "")


# -- streaming ----------------------------------------------------------------------------------


def iter_id_batches(inputs: Sequence[InputFile], batch_rows: int = 65536) -> Iterator[list[str]]:
    """Yield the stripped, non-blank id strings of *inputs*, in input order, in batches.

    Each batch holds at most *batch_rows* ids and is never empty. Raises :class:`InputError`
    when an input turns out to be unreadable part way through.
    """
    for inp in inputs:
        arrays = _parquet_arrays(inp, batch_rows) if inp.format == "parquet" else _csv_arrays(inp)
        rows = 0
        while True:
            try:
                array = next(arrays, None)
            except (pa.ArrowException, OSError, ValueError) as exc:
                where = f"after {rows:,} rows: " if rows else ""
                raise InputError(inp.path, where + _read_problem(exc, inp.format)) from exc
            if array is None:
                break
            rows += len(array)
            for start in range(0, len(array), batch_rows):
                ids = _ids_from(array.slice(start, batch_rows))
                if ids:
                    yield ids


def unique_ids(batches: Iterable[list[str]], seen: CompactIdSet) -> Iterator[list[str]]:
    """Drop ids already in *seen* (within and across batches), adding the others to it.

    *seen* may arrive pre-filled (ids finished by an earlier run). Empty batches are not yielded.
    """
    for batch in batches:
        add = seen.add
        fresh = [call_id for call_id in batch if add(call_id)]
        if fresh:
            yield fresh


def estimate_rows(inputs: Sequence[InputFile]) -> int | None:
    """A cheap estimate of the total number of rows, for progress display; None if unknown.

    Exact for Parquet (from the footer). For CSV, the file size divided by the average row
    length of the first 64 KiB; for ``.csv.gz`` the uncompressed size comes from the gzip
    trailer, which is only trusted when it is plausible (it is kept modulo 4 GiB).
    Stdin and pipes are unknown.
    """
    total = 0
    for inp in inputs:
        try:
            estimate = _estimate(inp)
        except (pa.ArrowException, OSError, ValueError):
            estimate = None
        if estimate is None:
            return None
        total += estimate
    return total


def _estimate(inp: InputFile) -> int | None:
    if inp._once is not None:
        return None
    if inp.format == "parquet":
        with pq.ParquetFile(inp.path) as parquet:
            return int(parquet.metadata.num_rows)
    sample_size = 1 << 16
    with open(inp.path, "rb") as raw:
        sample = _Chain(_decompressed(raw, inp.format)).read(sample_size)
    lines = sample.count(b"\n")
    if len(sample) < sample_size:  # the sample is the whole file
        return max(0, lines + (not sample.endswith(b"\n")) - inp.has_header)
    size = os.path.getsize(inp.path)
    if inp.format == "csv.gz":
        with open(inp.path, "rb") as raw:
            raw.seek(-4, os.SEEK_END)
            unpacked = int.from_bytes(raw.read(4), "little")  # ISIZE: length modulo 4 GiB
        if unpacked < max(size, sample_size):  # wrapped, or several gzip members
            return None
        size = unpacked
    return max(0, round(size * lines / sample_size) - inp.has_header)


def _csv_arrays(inp: InputFile) -> Iterator[pa.Array]:
    if inp._once is not None:
        if inp._once.consumed:
            raise InputError(inp.path, "this stream was already read (it can be read only once)")
        inp._once.consumed = True
        stream, prefix = inp._once.stream, inp._once.prefix
    else:
        stream, prefix = _open_binary(inp.path), b""
    # Close what we opened, but leave sys.stdin alone: the interpreter owns it.
    with contextlib.nullcontext() if inp.path == STDIN else stream:
        feed = _CsvFeed(_decompressed(_Chain(stream, prefix), inp.format))
        try:
            # The id column is read as binary, so non-UTF-8 bytes survive to be decoded leniently.
            reader = pcsv.open_csv(
                _pyarrow_file(feed),
                read_options=pcsv.ReadOptions(
                    block_size=CSV_BLOCK_BYTES,
                    column_names=None if inp.has_header else [inp.id_column],
                ),
                parse_options=_PARSE_OPTIONS,
                convert_options=pcsv.ConvertOptions(
                    include_columns=[inp.id_column], column_types={inp.id_column: pa.binary()}
                ),
            )
            with reader:
                for batch in reader:
                    yield batch.column(0)
        except (pa.ArrowException, OSError, ValueError) as exc:
            if feed.error is None:
                raise
            raise feed.error from exc  # a parse error at a cut-short end: report the cause
        if feed.error is not None:
            raise feed.error


def _parquet_arrays(inp: InputFile, batch_rows: int) -> Iterator[pa.Array]:
    # pre_buffer (on by default) caches every row group read until the file is closed, so memory
    # would grow with the file (150 MB at 5 million ids); off, it stays at one row group.
    # Page checksums, when the writer stored them, catch damage that decompression does not.
    with pq.ParquetFile(inp.path, pre_buffer=False, page_checksum_verification=True) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[inp.id_column]):
            yield batch.column(0)


def _ids_from(array: pa.Array) -> list[str]:
    """Stripped, non-blank values of a string-like array (vectorised unless bytes are bad)."""
    try:
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            array = array.cast(pa.string())  # binary: fails here if not valid UTF-8
        array = pc.utf8_trim_whitespace(array)
        ids: list[str] = array.filter(pc.not_equal(array, "")).to_pylist()
        return ids
    except (pa.ArrowInvalid, UnicodeDecodeError):
        # Some value is not UTF-8: keep it, decoded with U+FFFD, so it is reported as invalid.
        raw: list[bytes | None] = array.cast(pa.large_binary()).to_pylist()
        decoded = (value.decode("utf-8", "replace").strip() for value in raw if value is not None)
        return [value for value in decoded if value]


# -- byte plumbing ------------------------------------------------------------------------------

_PARSE_OPTIONS = pcsv.ParseOptions(newlines_in_values=True, ignore_empty_lines=True)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _PythonStream:
    """What ``pa.PythonFile`` needs of a Python object besides ``read``. Closing it is a no-op:
    the underlying stream belongs to whoever opened it."""

    closed = False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class _Recorder(_PythonStream):
    """Passes reads through, keeping a copy of the bytes (to replay a stream read only once)."""

    def __init__(self, stream: _Readable) -> None:
        self._stream = stream
        self._copy = bytearray()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._copy += data
        return data

    def recorded(self) -> bytes:
        return bytes(self._copy)


class _Chain(_PythonStream):
    """*prefix* (bytes a pre-flight took from a one-shot stream), then *source*.

    Reads are filled up to the size asked for, short only at the end: pyarrow's CSV reader
    fails to find the header when its first read comes back short.
    """

    def __init__(self, source: _Readable, prefix: bytes = b"") -> None:
        self._source = source
        self._prefix = prefix

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            want = -1 if size < 0 else size - len(out)
            if self._prefix:
                take = len(self._prefix) if want < 0 else want
                out += self._prefix[:take]
                self._prefix = self._prefix[take:]
                continue
            data = self._source.read(want)
            if not data:
                break
            out += data
        return bytes(out)


class _CsvFeed(_PythonStream):
    """What pyarrow's CSV reader reads: *source* cut at line ends, plus one final newline.

    pyarrow reads ahead in a background thread, and a read error there can surface before
    the rows read earlier (or at ``open_csv``). So a read error here is kept in
    :attr:`error` and shown to pyarrow as the end of the data; as only whole lines were
    handed out, no cut-short row is parsed, every complete row before the damage comes out,
    and the caller raises :attr:`error` afterwards. The final newline lets a header-only
    file without one read as zero rows instead of failing (a blank last line is ignored).
    """

    def __init__(self, source: _Readable) -> None:
        self._source = source
        self._carry = b""  # the start of a line whose end has not been read yet
        self._done = False
        self.error: Exception | None = None

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else CSV_BLOCK_BYTES
        while not self._done:
            if len(self._carry) >= size:  # a line longer than a block: pyarrow will say so
                out, self._carry = self._carry[:size], self._carry[size:]
                return out
            try:
                data = self._source.read(size - len(self._carry))
            except (pa.ArrowException, OSError, ValueError) as exc:
                self.error, self._done, self._carry = exc, True, b""
                return b""
            if not data:
                self._done = True
                out, self._carry = self._carry + b"\n", b""
                return out
            chunk = self._carry + data
            cut = chunk.rfind(b"\n") + 1
            self._carry = chunk[cut:]
            if cut:
                return chunk[:cut]
        return b""


def _decompressed(stream: _Readable, fmt: str) -> _Readable:
    if fmt != "csv.gz":
        return stream
    compressed: _Readable = pa.CompressedInputStream(_pyarrow_file(stream), "gzip")
    return compressed


def _pyarrow_file(stream: _Readable) -> pa.NativeFile:
    return pa.PythonFile(stream, mode="r")


# -- messages -----------------------------------------------------------------------------------


def _display(path: str) -> str:
    if path == STDIN:
        return "<stdin>"
    return path if path.isprintable() else repr(path)


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not a file (pass the files inside it)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or str(exc)


def _read_problem(exc: BaseException, fmt: str) -> str:
    message = str(exc)
    if "Empty CSV file" in message:  # pyarrow's words for no header row (even blank lines)
        return "empty file (no header row)"
    if fmt == "csv.gz" and isinstance(exc, OSError):
        return f"corrupt or truncated gzip data ({message})"
    if fmt == "parquet":
        return f"unreadable Parquet data ({message})"
    return message
