"""Preference-pair files: read uploads leniently, write downloads exactly.

A pairs file contains one labelled comparison per record with the columns
`prompt`, `chosen`, `rejected` and the optional `user_id` and `split`. A
`split` value is "train" or "val"; "test", "validation" and "valid" mean
"val", and an empty value leaves the split to the reader of the pairs. Two
formats are read:

- CSV with a header row (comma, semicolon or tab separated; fields may span
  lines when quoted, as spreadsheet programs write them);
- JSON Lines, one object per line. A `.json` file holding one array of such
  objects is read too.

Other columns are ignored with a warning. A column such as `label` or
`preferred` that would swap chosen and rejected is not interpreted: the file
must already put the preferred response under `chosen`.

Reading never stops at a bad record. Each one is reported by line number
("line 7: missing 'rejected'") and the remaining records are kept. A CSV
record is malformed when its field count differs from the header's, when text
follows a closing quote, or when a quoted field is never closed. Reading
resumes at the next record, or after an unclosed quote at the line after the
one where the record started.

Text decoding: UTF-8 (a byte order mark is allowed), UTF-16 when the file
starts with a UTF-16 byte order mark, otherwise cp1252 (the usual encoding of
spreadsheets saved on Windows), and latin-1 as the last resort, which decodes
any byte. A fallback decoding is reported in `PairsReadResult.warnings`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mrm.fileio import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
OPTIONAL_COLUMNS = ("user_id", "split")
PAIR_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
MAX_REPORTED_ERRORS = 200
# Python's csv module rejects fields over 128 KiB by default; long prompts
# (a whole conversation or article) can exceed that.
CSV_FIELD_LIMIT = 64 * 1024 * 1024
_CSV_DELIMITERS = (",", ";", "\t")
# Accepted values of the `split` column and the split of the embedding format each one means.
SPLIT_VALUES = {"train": "train", "val": "val", "test": "val", "validation": "val", "valid": "val"}
# After an unclosed quote the rest of the file is parsed again from the next line.
# Reading stops after this many such records, so the time stays linear in the file size.
MAX_CSV_RESTARTS = 20


@dataclass
class PairsReadResult:
    """Pairs read from a file, with one message per rejected record.

    Attributes:
        pairs: valid records as dicts with `prompt`, `chosen`, `rejected` and,
            when the record has a non-empty value, `user_id` and `split`
            ("train" or "val"); in file order.
        errors: one message per skipped record, prefixed with its line number
            (CSV, JSON Lines) or item number (JSON array). A message without
            a prefix concerns the whole file.
        warnings: facts about the file that did not drop any record, such as a
            fallback text encoding or ignored columns.
        encoding: the text encoding used to decode the file.
        format: "csv", "jsonl" or "json"; empty when the file could not be read.
    """

    pairs: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    encoding: str = ""
    format: str = ""


class _ErrorList(list):
    """A list of messages that stops growing after MAX_REPORTED_ERRORS, counting the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped = 0

    def add(self, message: str) -> None:
        if len(self) < MAX_REPORTED_ERRORS:
            self.append(message)
        else:
            self.dropped += 1

    def finish(self) -> list[str]:
        messages = list(self)
        if self.dropped:
            messages.append(f"... and {self.dropped} more invalid records not listed")
        return messages


def decode_bytes(data: bytes) -> tuple[str, str, list[str]]:
    """Decode file bytes to text; return (text, encoding name, warnings)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16"), "utf-16", []
    try:
        return data.decode("utf-8-sig"), "utf-8", []
    except UnicodeDecodeError as error:
        position = error.start
    for encoding in ("cp1252", "latin-1"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        message = (
            f"the file is not valid UTF-8 (first invalid byte at offset {position}); "
            f"decoded it as {encoding}. Save the file as UTF-8 if characters look wrong."
        )
        return text, encoding, [message]
    raise AssertionError("latin-1 decodes every byte sequence")


def read_pairs(source: str | os.PathLike | bytes, name: str = "") -> PairsReadResult:
    """Read preference pairs from a CSV or JSON Lines file.

    Args:
        source: a file path, or the file's bytes (as an upload delivers them).
        name: the file name, used to pick the format from its extension when
            `source` is bytes; ignored for paths, which carry their own name.

    Returns:
        The valid pairs and one message per skipped record. A file that
        cannot be read at all gives no pairs and a single error.
    """
    result = PairsReadResult()

    # Load the bytes.
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        path = Path(source)
        name = path.name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            result.errors.append(f"file not found: {path}")
            return result
        except IsADirectoryError:
            result.errors.append(f"expected a file but got a directory: {path}")
            return result
    if not data.strip():
        result.errors.append("the file is empty: expected a header row (CSV) or one JSON object per line")
        return result

    # Decode and pick the format.
    text, result.encoding, result.warnings = decode_bytes(data)
    if not text.strip():
        result.errors.append("the file is empty: expected a header row (CSV) or one JSON object per line")
        return result
    result.format = _detect_format(text, name)

    errors = _ErrorList()
    if result.format == "csv":
        _read_csv(text, result, errors, name)
    elif result.format == "json":
        _read_json_array(text, result, errors)
    else:
        _read_jsonl(text, result, errors)
    result.errors = errors.finish()

    if not result.pairs and not result.errors:
        result.errors.append("no pairs found: the file has no records")
    logger.info(
        "read %d pairs from %s (%s, %s); %d records skipped",
        len(result.pairs), name or "upload", result.format, result.encoding, len(errors) + errors.dropped,
    )
    return result


def _detect_format(text: str, name: str) -> str:
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"

    # A `.json` file or an unnamed upload: look at the first character.
    first = text.lstrip()[:1]
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl"
    return "csv"


def _check_record(record: Mapping, where: str, errors: _ErrorList) -> dict | None:
    """Validate one record; return the pair or None after adding an error."""
    missing = []
    wrong_type = []
    for column in REQUIRED_COLUMNS:
        value = record.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            missing.append(column)
        elif not isinstance(value, str):
            wrong_type.append(f"'{column}' must be text, got {type(value).__name__}")
    if missing:
        names = ", ".join(f"'{column}'" for column in missing)
        errors.add(f"{where}: missing {names}")
        return None
    if wrong_type:
        errors.add(f"{where}: " + "; ".join(wrong_type))
        return None
    if record["chosen"] == record["rejected"]:
        errors.add(f"{where}: chosen and rejected are identical")
        return None

    pair = {column: record[column] for column in REQUIRED_COLUMNS}
    user_id = record.get("user_id")
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int, type(None))):
        errors.add(f"{where}: 'user_id' must be text or an integer, got {type(user_id).__name__}")
        return None
    if user_id is not None and str(user_id).strip():
        pair["user_id"] = str(user_id).strip()

    split = record.get("split")
    if split is not None and not isinstance(split, str):
        errors.add(f"{where}: 'split' must be text, got {type(split).__name__}")
        return None
    if split is not None and split.strip():
        value = SPLIT_VALUES.get(split.strip().lower())
        if value is None:
            errors.add(f"{where}: invalid 'split' {split!r}; use train or val (test and validation also mean val)")
            return None
        pair["split"] = value
    return pair


def _warn_extra_columns(columns: Iterable[str], result: PairsReadResult) -> None:
    extra = sorted(set(columns) - set(PAIR_COLUMNS))
    if extra:
        names = ", ".join(f"'{column}'" for column in extra)
        result.warnings.append(
            f"ignored column(s) {names}: only prompt, chosen, rejected, user_id and split are read, "
            "and chosen must hold the preferred response"
        )


def _pick_delimiter(header_line: str, name: str) -> str:
    if name.lower().endswith(".tsv"):
        return "\t"

    # The delimiter is the one that splits the header into the most known column names.
    best, best_hits = ",", -1
    for delimiter in _CSV_DELIMITERS:
        cells = next(csv.reader([header_line], delimiter=delimiter), [])
        hits = sum(cell.strip().lower() in PAIR_COLUMNS for cell in cells)
        if hits > best_hits:
            best, best_hits = delimiter, hits
    return best


def _read_csv(text: str, result: PairsReadResult, errors: _ErrorList, name: str) -> None:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    header_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = _pick_delimiter(header_line, name)
    rows = _csv_rows(io.StringIO(text, newline="").readlines(), delimiter, errors)

    # Header row: blank lines before it are skipped.
    header: list[str] = []
    for _, row in rows:
        if any(cell.strip() for cell in row):
            header = [cell.strip().lower() for cell in row]
            break
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        names = ", ".join(f"'{column}'" for column in missing)
        found = ", ".join(f"'{cell}'" for cell in header) or "none"
        errors.add(
            f"missing column(s) {names} in the header row (found {found}); "
            "the first row must name the columns prompt, chosen, rejected and optionally user_id and split"
        )
        return
    _warn_extra_columns(header, result)

    # Records: a row whose field count differs from the header's is malformed,
    # because zip() would otherwise shift or drop its values silently.
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            errors.add(f"line {line}: {len(row)} fields but the header has {len(header)} columns")
            continue
        pair = _check_record(dict(zip(header, row)), f"line {line}", errors)
        if pair is not None:
            result.pairs.append(pair)


def _csv_rows(lines: list[str], delimiter: str, errors: _ErrorList) -> Iterator[tuple[int, list[str]]]:
    """Yield (first line number, fields) for each CSV record and add an error for each malformed one.

    `lines` are physical lines with their line endings. The reader runs in
    strict mode, so text after a closing quote (`"a" b`) and a quoted field
    that is never closed raise `csv.Error` in place of being read as data.
    """
    start = 0  # index in `lines` where the current reader starts
    restarts = 0
    while start < len(lines):
        reader = csv.reader(iter(lines[start:]), delimiter=delimiter, strict=True)

        # reader.line_num counts the lines this reader consumed, so a record
        # starts one line after the previous record ended.
        record_start = start + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                end = start + reader.line_num
                if "unexpected end of data" not in str(error):
                    # The reader drops the rest of the line it failed on and goes on with the next line.
                    errors.add(_malformed_csv_message(error, record_start, end))
                    record_start = end + 1
                    continue

                # A quoted field of this record is never closed, so the reader took
                # the rest of the file as one field. Read on from the next line.
                restarts += 1
                message = f"line {record_start}: malformed CSV (a quoted field is never closed)"
                if restarts > MAX_CSV_RESTARTS:
                    errors.add(
                        f"{message}; stopped reading after {MAX_CSV_RESTARTS} such records, "
                        "so the lines after it were not read"
                    )
                    return
                errors.add(f"{message}; close the quote, or double each quote that is part of the text (\"\")")
                start = record_start
                break
            yield record_start, row
            record_start = start + reader.line_num + 1


def _malformed_csv_message(error: csv.Error, first_line: int, last_line: int) -> str:
    if "expected after" not in str(error):
        return f"line {first_line}: malformed CSV ({error})"
    advice = "quote the whole field and double each quote inside it (\"\"), or remove the quotes"
    if last_line == first_line:
        return f"line {first_line}: malformed CSV (text follows a closing quote); {advice}"
    return (
        f"lines {first_line}-{last_line}: malformed CSV (text follows a closing quote on line {last_line}, "
        f"and a record that runs over several lines may start with an unbalanced quote on line {first_line}); {advice}"
    )


def _read_jsonl(text: str, result: PairsReadResult, errors: _ErrorList) -> None:
    def records():
        # A generator, so decoding errors and record errors are reported in line order.
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                errors.add(f"line {number}: not valid JSON ({error.msg} at column {error.colno})")

    _add_records(records(), result, errors)


def _read_json_array(text: str, result: PairsReadResult, errors: _ErrorList) -> None:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        errors.add(f"line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})")
        return
    if not isinstance(records, list):
        errors.add(f"expected a JSON array of objects, got {type(records).__name__}")
        return
    _add_records([(f"item {number}", record) for number, record in enumerate(records, start=1)], result, errors)


def _add_records(records: Iterable[tuple[str, object]], result: PairsReadResult, errors: _ErrorList) -> None:
    """Check decoded JSON records, each with its location for messages, and keep the valid pairs."""
    columns: set[str] = set()
    for where, record in records:
        if not isinstance(record, dict):
            errors.add(f"{where}: expected a JSON object, got {type(record).__name__}")
            continue
        columns.update(record)
        pair = _check_record(record, where, errors)
        if pair is not None:
            result.pairs.append(pair)
    _warn_extra_columns(columns, result)


def _columns_for(pairs: list[Mapping]) -> list[str]:
    columns = list(REQUIRED_COLUMNS)
    for column in OPTIONAL_COLUMNS:
        if any(pair.get(column) not in (None, "") for pair in pairs):
            columns.append(column)
    return columns


def pairs_to_csv_text(pairs: list[Mapping]) -> str:
    """Render pairs as CSV text with a header row; `user_id` and `split` appear when any pair has one."""
    columns = _columns_for(pairs)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for pair in pairs:
        writer.writerow(["" if pair.get(column) is None else str(pair[column]) for column in columns])
    return buffer.getvalue()


def pairs_to_jsonl_text(pairs: list[Mapping]) -> str:
    """Render pairs as JSON Lines, one object per pair with the pair columns only."""
    columns = _columns_for(pairs)
    lines = []
    for pair in pairs:
        record = {column: pair[column] for column in columns if pair.get(column) is not None}
        lines.append(json.dumps(record, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def write_pairs_csv(pairs: list[Mapping], path: str | os.PathLike) -> Path:
    """Write pairs to a UTF-8 CSV file atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(pairs_to_csv_text(pairs).encode("utf-8"))
    return path


def write_pairs_jsonl(pairs: list[Mapping], path: str | os.PathLike) -> Path:
    """Write pairs to a UTF-8 JSON Lines file atomically; return the path."""
    path = Path(path)
    write_text_atomic(path, pairs_to_jsonl_text(pairs))
    return path
