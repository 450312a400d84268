"""The validation gate names every cause (column, expectation, observed value) and never crashes on bad files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.validation import DataReadError, _run_suite, read_table, validate_frame
from tests.helpers import small_dataset_config, small_frame
from tollgate.app.cli import main


def _set(col: str, values: Callable[[pd.DataFrame], object]) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df[col] = values(df)
        return df

    return fn


def _nan_every(n: int, col: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[df.index[::n], col] = np.nan
        return df

    return fn


FAULTS = [
    ("missing column", lambda df: df.drop(columns=["usage_gb"]), "table", "missing columns ['usage_gb']"),
    ("extra column", _set("notes", lambda df: "x"), "table", "unexpected extra columns ['notes']"),
    (
        "wrong dtype",
        _set("tenure_months", lambda df: df["tenure_months"].astype(str)),
        "'tenure_months'",
        "dtype object, expected int",
    ),
    (
        "nulls over limit",
        _nan_every(4, "monthly_charges"),
        "'monthly_charges'",
        "null fraction 0.250 exceeds max_null_fraction 0.02",
    ),
    (
        "out of range",
        _set("support_calls_90d", lambda df: np.where(df.index < 3, 99, df["support_calls_90d"])),
        "'support_calls_90d'",
        "observed range 0..99",
    ),
    (
        "unseen category",
        _set("payment_method", lambda df: np.where(df.index < 2, "crypto", df["payment_method"])),
        "'payment_method'",
        "['crypto']",
    ),
    (
        "duplicate ids",
        _set("customer_id", lambda df: np.where(df.index < 4, "C1", df["customer_id"])),
        "'customer_id'",
        "4 rows share an id",
    ),
    (
        "unparsable timestamp",
        _set("event_time", lambda df: np.where(df.index == 0, "31/31/2026 25:00", df["event_time"].astype(str))),
        "'event_time'",
        "not parseable timestamps",
    ),
    (
        "non-binary label",
        _set("churned", lambda df: np.where(df.index == 1, 2, df["churned"])),
        "'churned'",
        "values outside [0, 1]",
    ),
    ("too few rows", lambda df: df.head(5), "table", "5 rows, expected 10.."),
]


@pytest.mark.parametrize(("name", "fault", "where", "phrase"), FAULTS, ids=[f[0] for f in FAULTS])
def test_each_fault_is_named(tmp_path: Path, name: str, fault, where: str, phrase: str) -> None:  # type: ignore[no-untyped-def]
    report = validate_frame(fault(small_frame()), small_dataset_config(), tmp_path / "gx")
    assert not report.passed
    lines = [f.line() for f in report.failures]
    assert any(where in line and phrase in line for line in lines), lines


def test_a_clean_frame_passes_and_builds_data_docs(tmp_path: Path) -> None:
    report = validate_frame(small_frame(), small_dataset_config(), tmp_path / "gx")
    assert report.passed, report.summary()
    assert Path(report.data_docs).exists() and Path(report.suite_path).exists()


def test_one_state_folder_checks_what_the_schema_says_now_and_rewrites_nothing_unchanged(tmp_path: Path) -> None:
    """The GX store of a state folder outlives a schema: a bound changed in config is what the next validation
    checks (the stored suite, its validation definition and checkpoint replaced), an unchanged schema leaves the
    stored files as they were, and a chunk's run (no Data Docs) beside them does not disturb the whole file's."""
    ds, frame, root = small_dataset_config(), small_frame(), tmp_path / "gx"
    stored = root / "gx"

    def files() -> dict[str, int]:
        return {str(p.relative_to(stored)): p.stat().st_mtime_ns for p in stored.glob("[!u]*/*.json")}

    assert validate_frame(frame, ds, root).passed
    before = files()
    assert set(before) == {
        "expectations/tollgate-dataset.json",
        "validation_definitions/tollgate-dataset-validation.json",
        "checkpoints/tollgate-dataset-checkpoint.json",
    }
    assert validate_frame(frame, ds, root).passed
    assert files() == before  # nothing rewritten

    col = "usage_gb"
    top = float(frame[col].max())
    tight = ds.model_copy(update={"columns": {**ds.columns, col: ds.columns[col].model_copy(update={"max": top / 2})}})
    report = validate_frame(frame, tight, root)
    assert not report.passed and any(f.column == col for f in report.failures), report.summary()
    assert f"{top / 2}" in (root / "gx" / "expectations" / "tollgate-dataset.json").read_text()

    results, _ = _run_suite(frame, ds, root, serving=False, row_count=False, docs=False)  # a chunk's run
    assert all(r.success for r in results)
    assert (stored / "checkpoints" / "tollgate-dataset-chunk-checkpoint.json").exists()
    assert validate_frame(frame, ds, root).passed  # the whole file's suite again: the loose bound, row count
    assert validate_frame(frame.head(5), ds, root).failures[0].expectation == "expect_table_row_count_to_be_between"


def test_the_data_docs_index_lists_only_the_newest_results_and_keeps_every_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rebuilding the index read every stored result (slower with each validation); it lists the newest few."""
    import tasks.validation as validation

    monkeypatch.setattr(validation, "DATA_DOCS_INDEX_RESULTS", 2)
    root, frame, ds = tmp_path / "gx", small_frame(), small_dataset_config()
    for _ in range(3):
        report = validate_frame(frame, ds, root)
    site = Path(report.data_docs).parent
    pages = sorted(str(p.relative_to(site)) for p in (site / "validations").rglob("*.html"))
    listed = [p for p in pages if p in Path(report.data_docs).read_text()]
    assert len(pages) == 3 and listed == pages[-2:], (pages, listed)  # run names sort by time


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Zurich"])
def test_typed_timestamps_pass_naive_or_tz_aware(tmp_path: Path, tz: str | None) -> None:
    ds = small_dataset_config()
    frame = small_frame()
    ts = pd.to_datetime(frame[ds.timestamp])
    frame[ds.timestamp] = ts.dt.tz_localize(tz) if tz else ts.astype("datetime64[us]")
    report = validate_frame(frame, ds, tmp_path / "gx")
    assert report.passed, report.summary()


def test_extra_columns_pass_when_policy_allows(tmp_path: Path) -> None:
    ds = small_dataset_config().model_copy(update={"extra_columns": "allow"})
    assert validate_frame(small_frame().assign(notes="x"), ds, tmp_path / "gx").passed


def test_csv_round_trip_validates(tmp_path: Path) -> None:
    path = tmp_path / "good.csv"
    small_frame().to_csv(path, index=False)
    assert validate_frame(read_table(path), small_dataset_config(), tmp_path / "gx").passed


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _truncated_parquet(tmp_path: Path) -> Path:
    good = tmp_path / "good.parquet"
    small_frame().to_parquet(good)
    return _write(tmp_path, "cut.parquet", good.read_bytes()[: good.stat().st_size // 2])


@pytest.mark.parametrize(
    ("make", "phrase"),
    [
        (lambda t: t / "absent.parquet", "no such file"),
        (lambda t: t, "is a directory"),
        (lambda t: _write(t, "empty.csv", b""), "file is empty"),
        (lambda t: _write(t, "noise.parquet", b"PAR1 this is not parquet at all"), "not a readable Parquet file"),
        (_truncated_parquet, "not a readable Parquet file"),
        (
            lambda t: _write(t, "semi.csv", b"customer_id;event_time;churned\nC1;2026-01-01;0\n"),
            "looks semicolon-delimited",
        ),
        (lambda t: _write(t, "data.json", b"{}"), "unsupported file type '.json'"),
    ],
    ids=["missing path", "directory", "empty file", "corrupt parquet", "truncated parquet", "wrong delimiter", "json"],
)
def test_unreadable_files_get_a_named_cause(tmp_path: Path, make, phrase: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(DataReadError, match=phrase) as err:
        read_table(path)
    assert str(path) in str(err.value)


def test_cli_validate_exit_codes_and_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.parquet"
    df = small_frame(600)
    df.loc[df.index[:3], "tenure_months"] = -1
    df.to_parquet(bad)
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "column 'tenure_months'" in out and "observed range -1" in out
    assert main(["validate", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err
    good = tmp_path / "good.parquet"
    small_frame(600).to_parquet(good)
    assert main(["validate", str(good)]) == 0


# -- serving-time data (records as they arrive for scoring: no label) ------------------------------------------
def test_serving_flag_ignores_a_label_that_is_present_and_says_so(tmp_path: Path) -> None:
    from tasks.validation import validate_file

    path = tmp_path / "scored.parquet"
    frame = small_frame()
    frame.loc[frame.index[:3], "churned"] = 7  # would fail the training suite: not a binary label
    frame.to_parquet(path)
    conformed, report = validate_file(path, small_dataset_config(), tmp_path / "gx", serving=True)
    assert report.passed and report.serving, report.summary()
    assert "churned" not in conformed.columns
    assert report.suite_path.endswith("tollgate-serving.json")
    assert report.notes == ["serving-time data: the label column 'churned' is present and was ignored"]
    assert "(serving-time suite, no label)" in report.summary()
    _, training = validate_file(path, small_dataset_config(), tmp_path / "gx", serving=False)
    assert not training.passed and not training.serving and training.notes == []


def test_without_the_flag_a_missing_label_picks_the_serving_suite_and_says_so(tmp_path: Path) -> None:
    from tasks.validation import validate_file

    path = tmp_path / "incoming.csv"
    small_frame().drop(columns=["churned"]).to_csv(path, index=False)
    _, report = validate_file(path, small_dataset_config(), tmp_path / "gx")
    assert report.passed and report.serving
    assert report.notes and "no label column 'churned'" in report.notes[0]
    _, labelled = validate_file(_parquet(tmp_path, small_frame()), small_dataset_config(), tmp_path / "gx")
    assert labelled.passed and not labelled.serving and labelled.notes == []


def test_the_serving_suite_still_fails_on_bad_inputs(tmp_path: Path) -> None:
    from tasks.validation import validate_file

    frame = small_frame()
    frame.loc[frame.index[0], "region"] = "atlantis"
    _, report = validate_file(_parquet(tmp_path, frame), small_dataset_config(), tmp_path / "gx", serving=True)
    assert not report.passed and "column 'region'" in report.summary() and "['atlantis']" in report.summary()


def _parquet(tmp_path: Path, frame: pd.DataFrame, name: str = "t.parquet") -> Path:
    path = tmp_path / name
    frame.to_parquet(path)
    return path


def test_cli_validate_serving_flag_and_automatic_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labelled = _parquet(tmp_path, small_frame(600), "labelled.parquet")
    assert main(["validate", "--serving", str(labelled)]) == 0
    captured = capsys.readouterr()
    assert "as serving-time data" in captured.out and "(serving-time suite, no label)" in captured.out
    assert "note: serving-time data: the label column 'churned' is present and was ignored" in captured.err

    unlabelled = _parquet(tmp_path, small_frame(600).drop(columns=["churned"]), "unlabelled.parquet")
    assert main(["validate", str(unlabelled)]) == 0
    captured = capsys.readouterr()
    assert "(serving-time suite, no label)" in captured.out
    assert "note: no label column 'churned': validated as serving-time data" in captured.err
    assert "--serving" in captured.err  # how to ask for it on purpose

    assert main(["validate", str(labelled)]) == 0  # labelled data: the training suite, no note
    captured = capsys.readouterr()
    assert "serving-time" not in captured.out + captured.err


@pytest.mark.parametrize("row_group_rows", [100, 333, 5000])
def test_any_span_of_parquet_chunks_reads_as_the_whole_pass_gives_it(tmp_path: Path, row_group_rows: int) -> None:
    """A Dask task of a batch run reads only its chunks (tasks.validation.parquet_chunks): chunk k is the same
    frame, values and dtypes, as the k-th chunk of one pass over the file, whatever the row groups."""
    from tasks.validation import iter_table, parquet_chunks

    rng = np.random.default_rng(7)
    n = 2345
    frame = pd.DataFrame(
        {
            "id": np.arange(n),
            "x": rng.random(n),
            "plan": pd.Categorical(rng.choice(["basic", "pro", "team"], n)),
            "note": rng.choice(["a", "b", None], n),
            "at": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
        }
    )
    path = tmp_path / "t.parquet"
    frame.to_parquet(path, row_group_size=row_group_rows, index=False)
    for chunk_rows in (100, 250, 777):
        whole = list(iter_table(path, chunk_rows))
        k = len(whole)
        assert k == -(-n // chunk_rows)
        for first, last in [(0, k), (1, k), (0, 1), (k - 1, k), (1, k - 1), (2, 3)]:
            span = list(parquet_chunks(path, chunk_rows, first, last))
            assert len(span) == last - first, (chunk_rows, first, last)
            for got, want in zip(span, whole[first:last], strict=True):
                pd.testing.assert_frame_equal(got, want)
    pd.testing.assert_frame_equal(pd.concat(whole, ignore_index=True), pd.read_parquet(path))
