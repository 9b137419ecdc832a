"""Preference-pair files: read uploads leniently, write downloads exactly.

A pairs file contains one labelled comparison per record with the columns
`prompt`, `chosen`, `rejected` and an optional `user_id`. Two formats are read:

- CSV with a header row (comma, semicolon or tab separated; fields may span
  lines when quoted, as spreadsheet programs write them);
- JSON Lines, one object per line. A `.json` file holding one array of such
  objects is read too.

Other columns are ignored with a warning. A column such as `label` or
`preferred` that would swap chosen and rejected is not interpreted: the file
must already put the preferred response under `chosen`.

Reading never stops at a bad record. Each one is reported by line number
("line 7: missing 'rejected'") and the remaining records are kept.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mrm.fileio import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
OPTIONAL_COLUMNS = ("user_id",)
PAIR_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
MAX_REPORTED_ERRORS = 200
# Python's csv module rejects fields over 128 KiB by default; long prompts
# (a whole conversation or article) can exceed that.
CSV_FIELD_LIMIT = 64 * 1024 * 1024
_CSV_DELIMITERS = (",", ";", "\t")


@dataclass
class PairsReadResult:
    """Pairs read from a file, with one message per rejected record.

    Attributes:
        pairs: valid records as dicts with `prompt`, `chosen`, `rejected` and,
            when the file has it, `user_id`; in file order.
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
    return pair


def _warn_extra_columns(columns: Iterable[str], result: PairsReadResult) -> None:
    extra = sorted(set(columns) - set(PAIR_COLUMNS))
    if extra:
        names = ", ".join(f"'{column}'" for column in extra)
        result.warnings.append(
            f"ignored column(s) {names}: only prompt, chosen, rejected and user_id are read, "
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
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)

    # Header row: blank lines before it are skipped.
    header: list[str] = []
    for row in reader:
        if any(cell.strip() for cell in row):
            header = [cell.strip().lower() for cell in row]
            break
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        names = ", ".join(f"'{column}'" for column in missing)
        found = ", ".join(f"'{cell}'" for cell in header) or "none"
        errors.add(
            f"missing column(s) {names} in the header row (found {found}); "
            "the first row must name the columns prompt, chosen, rejected and optionally user_id"
        )
        return
    _warn_extra_columns(header, result)

    # Records: csv.reader.line_num is the last physical line of the record just read,
    # so a record starts one line after the previous record ended.
    record_start = reader.line_num + 1
    try:
        for row in reader:
            where = f"line {record_start}"
            record_start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                errors.add(f"{where}: {len(row)} fields but the header has {len(header)} columns")
                continue
            record = dict(zip(header, row))
            pair = _check_record(record, where, errors)
            if pair is not None:
                result.pairs.append(pair)
    except csv.Error as error:
        errors.add(f"line {record_start}: unreadable CSV ({error}); the records after it were not read")


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
    if any(pair.get("user_id") not in (None, "") for pair in pairs):
        columns.append("user_id")
    return columns


def pairs_to_csv_text(pairs: list[Mapping]) -> str:
    """Render pairs as CSV text with a header row; `user_id` appears when any pair has one."""
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
