"""Config errors name the file, the key path and the reason; a good config resolves with overlays."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tollgate.app.cli import main
from tollgate.config import ConfigError, load_config


def _edit(config_dir: Path, fn) -> Path:  # type: ignore[no-untyped-def]
    path = config_dir / "pipeline.yaml"
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_bundled_config_is_valid_in_every_environment(project_root: Path) -> None:
    for env in ("dev", "staging", "prod"):
        loaded = load_config(project_root / "configs" / "pipeline.yaml", env, environ={})
        assert loaded.config.dataset.target == "churned"
    staging = load_config(project_root / "configs" / "pipeline.yaml", "staging", environ={})
    assert staging.config.gates.minimums["auc"] == 0.72  # overlay wins over pipeline.yaml
    prod = load_config(project_root / "configs" / "pipeline.yaml", "prod", environ={})
    assert prod.config.servers.mlflow_url == "http://mlflow.internal:5000"


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (lambda d: d["model"].update(learning_rate_typo=1), "model.learning_rate_typo", "unknown key"),
        (lambda d: d["gates"].update(minimums={"auc": "high"}), "gates.minimums.auc", "valid number"),
        (lambda d: d["project"].pop("name"), "project.name", "required key is missing"),
        (lambda d: d["gates"].update(minimums={"rmse": 3}), "gates.minimums", "'rmse' is not a binary metric"),
        (lambda d: d["model"].update(task="regression"), "model.task regression", "needs a numeric target"),
        (lambda d: d["model"].update(task="multiclass"), "model.task multiclass", "3 or more label values"),
        (lambda d: d["model"].update(kind="ridge"), "model.kind ridge", "does not fit task binary"),
        (lambda d: d["dataset"].update(segment_bins={"tenure_months": [12, 6]}), "segment_bins", "is not listed"),
        (lambda d: d["rollout"].update(canary_share=0), "rollout.canary_share", "greater than 0"),
        (lambda d: d["dataset"]["columns"]["tenure_months"].update(min=10, max=1), "tenure_months", "greater than max"),
        (lambda d: d["features"]["numeric"].append("nope"), "features.numeric", "'nope' is not in dataset.columns"),
        (lambda d: d["dataset"].update(segments=["tenure_months"]), "numeric segment column", "needs its bin edges"),
        (lambda d: d["dataset"].update(segments=["event_time"]), "segment column", "segments are category"),
        (lambda d: d["monitoring"].update(live_severe_at=0.9), "live_severe_at", "must be worse than"),
    ],
)
def test_each_error_names_file_key_and_reason(config_dir: Path, edit, key: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = _edit(config_dir, edit)
    with pytest.raises(ConfigError) as err:
        load_config(path, "dev", environ={})
    text = str(err.value)
    assert key in text and reason in text
    assert str(path) in text


def test_every_error_is_reported_not_just_the_first(config_dir: Path) -> None:
    def two(d: dict) -> None:  # type: ignore[type-arg]
        d["gates"]["confidence"] = 3
        d["rollout"]["bogus"] = True

    with pytest.raises(ConfigError) as err:
        load_config(_edit(config_dir, two), "dev", environ={})
    assert len(err.value.problems) == 2


def test_overlay_error_names_the_overlay_file(config_dir: Path) -> None:
    overlay = config_dir / "environments" / "staging.yaml"
    overlay.write_text(overlay.read_text() + "\nrollout:\n  canary_share: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(config_dir / "pipeline.yaml", "staging", environ={})
    assert f"{overlay}: rollout.canary_share" in str(err.value)


def test_environment_variable_override_and_its_errors(project_root: Path) -> None:
    cfg = load_config(
        project_root / "configs" / "pipeline.yaml", "dev", environ={"TOLLGATE__SERVERS__MLFLOW_PORT": "5999"}
    )
    assert cfg.config.servers.mlflow_url == "http://127.0.0.1:5999"
    with pytest.raises(ConfigError, match=r"environment variable TOLLGATE__SERVERS__MLFLOW_PORT: servers\.mlflow_port"):
        load_config(project_root / "configs" / "pipeline.yaml", "dev", environ={"TOLLGATE__SERVERS__MLFLOW_PORT": "x"})


@pytest.mark.parametrize("content", ["a: [1, 2", "- just\n- a list\n"])
def test_unreadable_yaml_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path, "dev", environ={})


def test_missing_file_and_unknown_env(tmp_path: Path, project_root: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown environment 'qa'"):
        load_config(project_root / "configs" / "pipeline.yaml", "qa")


def test_cli_config_check_exits_2_and_prints_every_problem(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _edit(config_dir, lambda d: d["gates"].update(confidence=9, nonsense=1))
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert "gates.confidence" in err and "gates.nonsense: unknown key" in err


def test_cli_config_show_json_is_the_resolved_config(project_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["--env", "staging", "config", "show", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["gates"]["minimums"]["auc"] == 0.72 and body["dataset"]["id"] == "customer_id"


def test_digest_changes_with_a_threshold_not_with_servers(project_root: Path) -> None:
    path = project_root / "configs" / "pipeline.yaml"
    base = load_config(path, environ={}).config.digest()
    assert load_config(path, environ={"TOLLGATE__SERVERS__MLFLOW_PORT": "5001"}).config.digest() == base
    assert load_config(path, environ={"TOLLGATE__GATES__MINIMUMS__AUC": "0.71"}).config.digest() != base


def test_numeric_segment_through_bins_and_task_types(config_dir: Path) -> None:
    def binned(d: dict) -> None:  # type: ignore[type-arg]
        d["dataset"].update(segments=["tier", "tenure_months"], segment_bins={"tenure_months": [12, 36]})

    cfg = load_config(_edit(config_dir, binned), "dev", environ={}).config
    assert cfg.dataset.segment_bins == {"tenure_months": [12.0, 36.0]}

    def regression(d: dict) -> None:  # type: ignore[type-arg]
        d["dataset"]["columns"]["churned"] = {"type": "float", "min": 0, "max": 1}
        d["model"].update(task="regression", kind="ridge")
        d["gates"].update(minimums={"r2": 0.1}, maximums={"rmse": 0.5})
        d["monitoring"].update(live_degraded_at=0.5, live_severe_at=0.6)  # rmse: higher is worse

    cfg = load_config(_edit(config_dir, regression), "dev", environ={}).config
    assert cfg.model.task == "regression" and cfg.gates.maximums == {"rmse": 0.5}


def test_compute_dask_address_is_checked_and_named(project_root: Path) -> None:
    path = project_root / "configs" / "pipeline.yaml"
    assert load_config(path, "dev").config.compute.dask_address == ""  # in process
    for good in ("local:2", "tcp://10.0.0.5:8786"):
        cfg = load_config(path, "dev", environ={"TOLLGATE__COMPUTE__DASK_ADDRESS": good}).config
        assert cfg.compute.dask_address == good
    for bad in ("local:0", "dask://x", "tcp://host", "local"):
        with pytest.raises(ConfigError, match=r"compute\.dask_address.*not a Dask address"):
            load_config(path, "dev", environ={"TOLLGATE__COMPUTE__DASK_ADDRESS": bad})


def test_the_postgres_backend_takes_no_password_and_names_one_database_per_server(project_root: Path) -> None:
    path = project_root / "configs" / "pipeline.yaml"
    env = {"TOLLGATE__SERVERS__BACKEND": "postgres", "TOLLGATE__SERVERS__POSTGRES_URL": "postgresql://tg@db:5432"}
    servers = load_config(path, "dev", environ=env).config.servers
    assert servers.database_url("prefect") == "postgresql+asyncpg://tg@db:5432/tollgate_prefect"
    assert servers.database_url("mlflow") == "postgresql://tg@db:5432/tollgate_mlflow"
    assert load_config(path, "dev", environ={}).config.servers.database_url("mlflow") is None  # sqlite
    with pytest.raises(ConfigError, match=r"servers\.postgres_url.*PGPASSWORD"):
        load_config(path, "dev", environ={**env, "TOLLGATE__SERVERS__POSTGRES_URL": "postgresql://tg:secret@db:5432"})
    with pytest.raises(ConfigError, match=r"servers.*postgres_url is not set"):
        load_config(path, "dev", environ={"TOLLGATE__SERVERS__BACKEND": "postgres"})
    with pytest.raises(ConfigError, match=r"servers\.artifacts_uri.*AWS_"):
        load_config(path, "dev", environ={"TOLLGATE__SERVERS__ARTIFACTS_URI": "s3://key:secret@bucket/x"})


def test_the_prediction_log_uri_is_an_s3_prefix_without_credentials(project_root: Path) -> None:
    path = project_root / "configs" / "pipeline.yaml"
    ok = load_config(path, "dev", environ={"TOLLGATE__SERVING__LOG_URI": "s3://bucket/predlog/"}).config
    assert (
        ok.serving.log_uri == "s3://bucket/predlog"
        and load_config(path, "dev", environ={}).config.serving.log_uri is None
    )
    for bad, said in (
        ("file:///tmp/log", "use s3://bucket/prefix"),
        ("s3://b/p?endpoint_override=x", "s3_endpoint_url"),
    ):
        with pytest.raises(ConfigError, match=rf"serving\.log_uri.*{said}"):
            load_config(path, "dev", environ={"TOLLGATE__SERVING__LOG_URI": bad})
    with pytest.raises(ConfigError, match=r"serving\.log_uri.*AWS_"):
        load_config(path, "dev", environ={"TOLLGATE__SERVING__LOG_URI": "s3://key:secret@bucket/x"})
