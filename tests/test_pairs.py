"""Tests for mrm.pairs: reading uploaded pair files and writing downloads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mrm.pairs import (
    MAX_CSV_RESTARTS,
    MAX_REPORTED_ERRORS,
    pairs_to_csv_text,
    pairs_to_jsonl_text,
    read_pairs,
    write_pairs_csv,
    write_pairs_jsonl,
)

FIXTURES = Path(__file__).parent / "fixtures"


def test_read_csv_fixture_keeps_all_valid_rows():
    result = read_pairs(FIXTURES / "pairs_valid.csv")
    assert result.errors == []
    assert result.format == "csv"
    assert len(result.pairs) == 4


def test_read_csv_keeps_quoted_newlines_and_quotes():
    result = read_pairs(FIXTURES / "pairs_valid.csv")
    assert result.pairs[1]["chosen"] == "Soft rain on the roof,\nthe kettle begins to sing,\nthe cat stays inside."
    assert result.pairs[2]["prompt"] == 'Explain "idempotent" simply'
    assert result.pairs[0]["prompt"] == "Summarise: the meeting moved to Friday, 3 pm."


def test_read_csv_reads_user_ids():
    result = read_pairs(FIXTURES / "pairs_valid.csv")
    assert [pair["user_id"] for pair in result.pairs] == ["ann", "ann", "bob", "bob"]


def test_read_jsonl_fixture_reports_each_bad_line():
    result = read_pairs(FIXTURES / "pairs_malformed.jsonl")
    assert result.format == "jsonl"
    assert [pair["prompt"] for pair in result.pairs] == ["Name a prime number", "Capital of France?", "Count to three"]
    assert "line 3: missing 'rejected'" in result.errors
    assert any(message.startswith("line 5: not valid JSON") for message in result.errors)
    assert "line 6: expected a JSON object, got list" in result.errors
    assert "line 7: chosen and rejected are identical" in result.errors
    assert "line 9: missing 'prompt'" in result.errors
    assert "line 10: 'chosen' must be text, got int" in result.errors
    assert len(result.errors) == 6


def test_read_jsonl_without_user_id():
    result = read_pairs(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n', "x.jsonl")
    assert result.pairs == [{"prompt": "p", "chosen": "a", "rejected": "b"}]


def test_read_jsonl_integer_user_id_becomes_text():
    result = read_pairs(b'{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": 17}\n', "x.jsonl")
    assert result.pairs[0]["user_id"] == "17"


def test_read_csv_line_numbers_after_multiline_record():
    text = 'prompt,chosen,rejected\n"two\nlines",a,b\nq,,c\n'
    result = read_pairs(text.encode(), "pairs.csv")
    assert result.errors == ["line 4: missing 'chosen'"]


def test_read_csv_row_with_too_many_fields():
    text = "prompt,chosen,rejected\np,a,b,extra\n"
    result = read_pairs(text.encode(), "pairs.csv")
    assert result.errors == ["line 2: 4 fields but the header has 3 columns"]


def test_read_csv_row_with_too_few_fields():
    text = "prompt,chosen,rejected,user_id\np,a,b\nq,a,b,u4\n"
    result = read_pairs(text.encode(), "pairs.csv")
    assert result.errors == ["line 2: 3 fields but the header has 4 columns"]
    assert result.pairs == [{"prompt": "q", "chosen": "a", "rejected": "b", "user_id": "u4"}]


def test_read_csv_unbalanced_quote_is_malformed():
    text = 'prompt,chosen,rejected,user_id\n"unterminated,"a","b",u3\nq,a,b,u4\n'
    result = read_pairs(text.encode(), "pairs.csv")
    assert len(result.errors) == 1
    assert result.errors[0].startswith("line 2: malformed CSV (text follows a closing quote)")
    assert result.pairs == [{"prompt": "q", "chosen": "a", "rejected": "b", "user_id": "u4"}]


def test_read_csv_text_after_closing_quote():
    text = 'prompt,chosen,rejected\n"a" junk,b,c\nq,a,b\n'
    result = read_pairs(text.encode(), "pairs.csv")
    assert len(result.errors) == 1
    assert result.errors[0].startswith("line 2: malformed CSV (text follows a closing quote)")
    assert result.pairs == [{"prompt": "q", "chosen": "a", "rejected": "b"}]


def test_read_csv_semicolon_text_after_quote():
    result = read_pairs(b'prompt;chosen;rejected\n"a" x;b;c\nq;a;b\n', "pairs.csv")
    assert result.errors[0].startswith("line 2: malformed CSV (text follows a closing quote)")
    assert len(result.pairs) == 1


def test_read_csv_unclosed_quote_resumes_next_line():
    text = 'prompt,chosen,rejected\n"open,a,b\nq,a,b\n'
    result = read_pairs(text.encode(), "pairs.csv")
    assert len(result.errors) == 1
    assert result.errors[0].startswith("line 2: malformed CSV (a quoted field is never closed)")
    assert result.pairs == [{"prompt": "q", "chosen": "a", "rejected": "b"}]


def test_read_csv_malformed_multiline_record_lines():
    text = 'prompt,chosen,rejected\n"two\nlines" junk,a,b\nq,,c\n'
    result = read_pairs(text.encode(), "pairs.csv")
    assert result.errors[0].startswith("lines 2-3: malformed CSV")
    assert result.errors[1] == "line 4: missing 'chosen'"


def test_read_csv_line_numbers_after_unclosed_quote():
    text = 'prompt,chosen,rejected\n"multi\nline",a,b\n"open,x,y\nq,,c\n'
    result = read_pairs(text.encode(), "pairs.csv")
    assert result.errors[0].startswith("line 4: malformed CSV (a quoted field is never closed)")
    assert result.errors[1] == "line 5: missing 'chosen'"
    assert result.pairs == [{"prompt": "multi\nline", "chosen": "a", "rejected": "b"}]


def test_read_csv_unclosed_quotes_stop_after_limit():
    # Each line opens a quote that the next lines never close; read as one field, they close and reopen it.
    lines = ['a","'] * (MAX_CSV_RESTARTS + 1) + ["q,a,b"]
    result = read_pairs(("prompt,chosen,rejected\n" + "\n".join(lines) + "\n").encode(), "pairs.csv")
    assert len(result.errors) == MAX_CSV_RESTARTS + 1
    assert "so the lines after it were not read" in result.errors[-1]
    assert result.pairs == []


def test_read_csv_crlf_quoting_still_reads():
    text = 'prompt,chosen,rejected\r\n"a, ""quoted"" word","x\r\ny",z\r\nq,,c\r\n'
    result = read_pairs(text.encode(), "pairs.csv")
    assert result.pairs == [{"prompt": 'a, "quoted" word', "chosen": "x\r\ny", "rejected": "z"}]
    assert result.errors == ["line 4: missing 'chosen'"]


def test_read_csv_quotes_inside_unquoted_field():
    result = read_pairs(b'prompt,chosen,rejected\nHe said "hi" to me,a "b" c,d\n', "pairs.csv")
    assert result.errors == []
    assert result.pairs == [{"prompt": 'He said "hi" to me', "chosen": 'a "b" c', "rejected": "d"}]


def test_read_split_column_values():
    text = "prompt,chosen,rejected,split\np,a,b,train\np,a,c,test\np,a,d, Validation \np,a,e,val\np,a,f,\n"
    result = read_pairs(text.encode(), "pairs.csv")
    assert [pair.get("split") for pair in result.pairs] == ["train", "val", "val", "val", None]


def test_read_split_column_is_not_an_ignored_column():
    result = read_pairs(b"prompt,chosen,rejected,split\np,a,b,train\n", "pairs.csv")
    assert result.warnings == []


def test_read_invalid_split_is_malformed():
    result = read_pairs(b"prompt,chosen,rejected,split\np,a,b,dev\nq,a,b,train\n", "pairs.csv")
    assert result.errors == ["line 2: invalid 'split' 'dev'; use train or val (test and validation also mean val)"]
    assert len(result.pairs) == 1


def test_read_jsonl_split_must_be_text():
    result = read_pairs(b'{"prompt": "p", "chosen": "a", "rejected": "b", "split": 1}\n', "x.jsonl")
    assert result.errors == ["line 1: 'split' must be text, got int"]


def test_split_column_round_trip(tmp_path):
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "split": "val"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
    assert read_pairs(write_pairs_csv(pairs, tmp_path / "out.csv")).pairs == pairs
    assert read_pairs(write_pairs_jsonl(pairs, tmp_path / "out.jsonl")).pairs == pairs


def test_read_csv_missing_column_names_found_columns():
    result = read_pairs(b"question,good,bad\nq,a,b\n", "pairs.csv")
    assert result.pairs == []
    assert len(result.errors) == 1
    assert "missing column(s) 'prompt', 'chosen', 'rejected'" in result.errors[0]
    assert "'question'" in result.errors[0]


def test_read_csv_header_is_case_and_space_insensitive():
    result = read_pairs(b" Prompt , CHOSEN,Rejected\np,a,b\n", "pairs.csv")
    assert result.pairs == [{"prompt": "p", "chosen": "a", "rejected": "b"}]


def test_read_csv_semicolon_delimiter():
    result = read_pairs(b"prompt;chosen;rejected\nHi, you;Hello, friend;Go away\n", "pairs.csv")
    assert result.pairs == [{"prompt": "Hi, you", "chosen": "Hello, friend", "rejected": "Go away"}]


def test_read_tsv_file():
    result = read_pairs(b"prompt\tchosen\trejected\np\ta, b\tc\n", "pairs.tsv")
    assert result.pairs == [{"prompt": "p", "chosen": "a, b", "rejected": "c"}]


def test_read_extra_columns_are_ignored_with_warning():
    result = read_pairs(b"prompt,chosen,rejected,label\np,a,b,1\n", "pairs.csv")
    assert result.pairs == [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert len(result.warnings) == 1
    assert "'label'" in result.warnings[0]


def test_read_detects_jsonl_without_extension():
    result = read_pairs(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    assert result.format == "jsonl"
    assert len(result.pairs) == 1


def test_read_detects_csv_without_extension():
    result = read_pairs(b"prompt,chosen,rejected\np,a,b\n")
    assert result.format == "csv"
    assert len(result.pairs) == 1


def test_read_json_array_reports_item_numbers():
    records = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}]
    result = read_pairs(json.dumps(records).encode(), "pairs.json")
    assert result.format == "json"
    assert len(result.pairs) == 1
    assert result.errors == ["item 2: missing 'rejected'"]


def test_read_utf8_with_bom():
    data = "prompt,chosen,rejected\nCafé,oui,non\n".encode("utf-8-sig")
    result = read_pairs(data, "pairs.csv")
    assert result.pairs == [{"prompt": "Café", "chosen": "oui", "rejected": "non"}]
    assert result.warnings == []


def test_read_cp1252_falls_back_with_warning():
    data = "prompt,chosen,rejected\nCafé “menu”,oui,non\n".encode("cp1252")
    result = read_pairs(data, "pairs.csv")
    assert result.encoding == "cp1252"
    assert result.pairs[0]["prompt"] == "Café “menu”"
    assert "not valid UTF-8" in result.warnings[0]


def test_read_undefined_cp1252_byte_falls_back_to_latin1():
    data = b"prompt,chosen,rejected\np\x81,a,b\n"
    result = read_pairs(data, "pairs.csv")
    assert result.encoding == "latin-1"
    assert result.pairs[0]["prompt"] == "p\x81"


def test_read_utf16_with_bom():
    data = "prompt,chosen,rejected\nñ,a,b\n".encode("utf-16")
    result = read_pairs(data, "pairs.csv")
    assert result.pairs == [{"prompt": "ñ", "chosen": "a", "rejected": "b"}]


@pytest.mark.parametrize("data", [b"", b"  \n\n", "\ufeff".encode("utf-8")])
def test_read_empty_file_is_an_error(data):
    result = read_pairs(data, "pairs.csv")
    assert result.pairs == []
    assert result.errors[0].startswith("the file is empty")


def test_read_header_only_is_an_error():
    result = read_pairs(b"prompt,chosen,rejected\n", "pairs.csv")
    assert result.pairs == []
    assert result.errors == ["no pairs found: the file has no records"]


def test_read_missing_file_is_an_error(tmp_path):
    result = read_pairs(tmp_path / "nope.csv")
    assert result.errors == [f"file not found: {tmp_path / 'nope.csv'}"]


def test_read_caps_the_error_list():
    lines = ['{"prompt": "p"}'] * (MAX_REPORTED_ERRORS + 5)
    result = read_pairs("\n".join(lines).encode(), "x.jsonl")
    assert len(result.errors) == MAX_REPORTED_ERRORS + 1
    assert result.errors[-1] == "... and 5 more invalid records not listed"


def test_csv_round_trip(tmp_path):
    pairs = read_pairs(FIXTURES / "pairs_valid.csv").pairs
    path = write_pairs_csv(pairs, tmp_path / "out.csv")
    assert read_pairs(path).pairs == pairs


def test_jsonl_round_trip(tmp_path):
    pairs = read_pairs(FIXTURES / "pairs_valid.csv").pairs
    path = write_pairs_jsonl(pairs, tmp_path / "out.jsonl")
    assert read_pairs(path).pairs == pairs


def test_csv_text_without_user_ids():
    text = pairs_to_csv_text([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert text.splitlines()[0] == "prompt,chosen,rejected"


def test_jsonl_text_has_one_object_per_pair():
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "user_id": "u"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
    lines = pairs_to_jsonl_text(pairs).splitlines()
    assert [json.loads(line) for line in lines] == pairs


def test_read_csv_long_field():
    long_prompt = "word " * 60_000  # 300 000 characters, over the csv module's default limit
    text = pairs_to_csv_text([{"prompt": long_prompt, "chosen": "a", "rejected": "b"}])
    previous_limit = csv.field_size_limit(131072)  # the default, in case an earlier read raised it
    try:
        result = read_pairs(text.encode(), "pairs.csv")
    finally:
        csv.field_size_limit(previous_limit)
    assert result.errors == []
    assert result.pairs[0]["prompt"] == long_prompt
