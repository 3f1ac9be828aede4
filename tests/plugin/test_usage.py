"""What every user sees first: --help and --markers work; report paths and baseline names are
checked before any test runs; a report that still cannot be written is said after the summary
(issue 11, items 5 and 7)."""

from __future__ import annotations

import os

import pytest

SUITE = """
import pytest

@pytest.mark.load(iterations=10)
def test_load():
    pass
"""


@pytest.mark.parametrize("flag", ["--help", "--markers"])
def test_help_and_markers_work(pytester: pytest.Pytester, flag: str) -> None:
    result = pytester.runpytest_subprocess(flag)
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    if flag == "--help":
        result.stdout.fnmatch_lines(["*--stressguard-compare-fail*", "*'p95:+10%'*"])
    else:
        result.stdout.fnmatch_lines(["@pytest.mark.load(users=1, *", "@pytest.mark.soak(*"])


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--stressguard-json", "{tmp}/a/file/x.json", "is not a directory"),
    ("--stressguard-json", "{tmp}", "is a directory"),
    ("--stressguard-json", "/proc/x.json", "is not writable"),
    ("--stressguard-html", "{tmp}/a/file/x.html", "is not a directory"),
    ("--stressguard-csv", "{tmp}/a/file", "exists and is not a directory"),
    ("--stressguard-save", "a/b", "baseline name 'a/b'"),
    ("--stressguard-compare", ".hidden", "baseline name '.hidden'"),
])
def test_a_bad_output_path_fails_at_start_in_one_line(
        pytester: pytest.Pytester, option: str, value: str, says: str) -> None:
    if value == "/proc/x.json" and os.geteuid() == 0 and not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    (pytester.path / "a").mkdir()
    (pytester.path / "a" / "file").write_text("")
    pytester.makepyfile(test_it=SUITE)
    result = pytester.runpytest(f"{option}={value.format(tmp=pytester.path)}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {option}=*{says}*"])
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert "test_load" not in result.stdout.str()  # nothing ran


def test_a_report_that_cannot_be_written_at_the_end_is_said_after_the_summary(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it=SUITE + """
import os, shutil

def test_takes_the_directory_away():
    shutil.rmtree(os.environ["REPORT_DIR"])
    open(os.environ["REPORT_DIR"], "w").close()  # a file where the directory was
""")
    reports = pytester.path / "reports"
    reports.mkdir()
    os.environ["REPORT_DIR"] = str(reports)
    try:
        result = pytester.runpytest(f"--stressguard-json={reports}/r.json", "-p", "no:randomly")
    finally:
        del os.environ["REPORT_DIR"]
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*= stressguard =*", "load*", "*test_load*",
                                 "stressguard: FAILED: could not write the JSON report to *r.json*"])


def test_written_files_and_the_saved_baseline_are_named(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_it=SUITE)
    result = pytester.runpytest(f"--stressguard-json={pytester.path}/r.json",
                                "--stressguard-save=main", f"--stressguard-dir={pytester.path}/b")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["stressguard: wrote the JSON report: *r.json",
                                 "stressguard: wrote baseline 'main': *b/main.json"])
