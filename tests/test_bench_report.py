"""The benchmark's table writer (bench/report.py): ratios, targets and the Markdown it writes.
The benchmark itself is too slow for the suite (`make bench`); this part is pure."""

from __future__ import annotations

from bench import report
from bench.report import Row, Target


def test_a_ratio_is_the_value_over_its_ceiling_and_the_target_judges_it():
    row = Row("producer", 760, "msg/s", 950, report.PRODUCER)
    assert row.ratio == 0.8
    assert row.met is True
    assert Row("producer", 759, "msg/s", 950, report.PRODUCER).met is False


def test_a_time_against_its_ideal_must_stay_under_the_limit():
    assert Row("scenario", 14.4, "s", 14.0, report.SCENARIO).met is True  # 1.029
    assert Row("scenario", 14.5, "s", 14.0, report.SCENARIO).met is False  # 1.036


def test_an_idle_rate_is_judged_on_its_value_not_a_ratio():
    assert Row("idle", 1.0, "req/s", None, report.IDLE).met is True
    assert Row("idle", 1.08, "req/s", None, report.IDLE).met is False
    assert Row("idle", 1.08, "req/s").met is None  # no target: nothing to meet


def test_a_row_not_measured_says_why_and_meets_nothing():
    row = Row("--concurrency 4", None, "s", 4.0, report.SCENARIO, note="not available")
    assert row.ratio is None and row.met is None
    assert row.cells() == ("--concurrency 4", "not available", "4.00 s", "", "≤ 1.03×", "")


def test_cells_show_as_many_digits_as_mean_something():
    row = Row("drain", 1234.5, "msg/s", 12.34, Target(at_least=True, limit=0.8), note="best")
    assert row.cells() == ("drain", "1,234 msg/s; best", "12.3 msg/s", "100.04", "≥ 0.8×", "yes")
    assert report.number(0.456) == "0.46"


def test_the_table_has_one_line_per_row_and_escapes_pipes():
    text = report.markdown_table([Row("a | b", 1.0, "s", 2.0, report.SCENARIO)])
    lines = text.splitlines()
    assert lines[0] == "| what | measured | ceiling / ideal | ratio | target | met? |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| a \\| b | 1.00 s | 2.00 s | 0.50 | ≤ 1.03× | yes |"
    assert len(lines) == 3


def test_the_document_names_what_missed():
    rows = [
        Row("producer", 700, "msg/s", 1000, report.PRODUCER),
        Row("idle", 0.9, "req/s", None, report.IDLE),
    ]
    text = report.document({"when": "now", "command": "`make bench`"}, rows, ["a note"])
    assert "- **command**: `make bench`" in text
    assert "| producer | 700 msg/s | 1,000 msg/s | 0.70 | ≥ 0.8× | **no** |" in text
    assert "Targets: missed: producer." in text
    assert text.endswith("## Notes\n\n- a note\n")


def test_the_header_says_where_it_ran():
    header = report.machine("in-memory Azurite", "make bench", azurite=True)
    assert set(header) >= {"when", "machine", "OS", "Python", "azure-storage-queue", "Azurite"}
    assert header["Azurite"][0].isdigit()  # its version, from node_modules
    assert report.machine("the account", "x", azurite=False)["Azurite"] == "not used"
