from pathlib import Path

import pytest

from segflow.core.config import (
    REPO_ROOT,
    ConfigError,
    apply_env_overrides,
    expand_env_refs,
    load_settings,
    resolve_sqlite_url,
)


def test_defaults_resolve_relative_paths_against_the_config_file(tmp_path):
    cfg = tmp_path / "segflow.yml"
    cfg.write_text("warehouse:\n  path: wh/x.duckdb\nsources:\n  crm:\n    url: sqlite:///crm.sqlite\n")
    settings = load_settings(cfg, environ={})
    assert settings.warehouse_path == tmp_path / "wh" / "x.duckdb"
    assert settings.raw["sources"]["crm"]["url"] == f"sqlite:///{tmp_path / 'crm.sqlite'}"
    # Keys absent from the file come from the defaults.
    assert settings.horizon_days == 90


def test_environment_overrides_win_and_keep_types(tmp_path):
    cfg = tmp_path / "segflow.yml"
    cfg.write_text("churn:\n  horizon_days: 30\n")
    settings = load_settings(cfg, environ={"SEGFLOW__CHURN__HORIZON_DAYS": "60", "SEGFLOW__CLUSTERING__K_MAX": "5"})
    assert settings.horizon_days == 60
    assert settings.raw["clustering"]["k_max"] == 5


def test_root_key_moves_relative_paths(tmp_path):
    (tmp_path / "examples").mkdir()
    cfg = tmp_path / "examples" / "segflow.yml"
    cfg.write_text("root: ..\nwarehouse:\n  path: warehouse/a.duckdb\n")
    assert load_settings(cfg, environ={}).warehouse_path == tmp_path / "warehouse" / "a.duckdb"


def test_secrets_are_referenced_not_stored(tmp_path):
    cfg = tmp_path / "segflow.yml"
    cfg.write_text("sources:\n  crm:\n    url: postgresql://app:${CRM_PASSWORD}@db/crm\n")
    settings = load_settings(cfg, environ={"CRM_PASSWORD": "s3cr3t"})
    assert settings.raw["sources"]["crm"]["url"] == "postgresql://app:s3cr3t@db/crm"
    with pytest.raises(ConfigError, match="CRM_PASSWORD"):
        load_settings(cfg, environ={})


def test_explicit_config_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yml"):
        load_settings(tmp_path / "missing.yml", environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("warehous:\n  path: x.duckdb\n", "unknown key 'warehous' (did you mean 'warehouse'?)"),
        ("writeback:\n  crm_ulr: sqlite:///x\n", "unknown key 'writeback.crm_ulr' (did you mean 'writeback.crm_url'?)"),
        ("sourcess: {}\n", "unknown key 'sourcess' (did you mean 'sources'?)"),
        (
            "sources:\n  crm:\n    url: sqlite:///c.db\n    tabel: contacts\n",
            "unknown key 'sources.crm.tabel' (did you mean 'sources.crm.table'?)",
        ),
        (
            "sources:\n  tx:\n    path: t\n    mapping:\n      renam: {}\n",
            "unknown key 'sources.tx.mapping.renam' (did you mean 'sources.tx.mapping.rename'?)",
        ),
        ("churn:\n  horizon_days: soon\n", "churn.horizon_days: Input should be a valid integer"),
        ("churn:\n  risk_bands: {medium: 0.7, high: 0.6}\n", "medium (0.7) must be below high (0.6)"),
        ("monitoring:\n  on_drift: panic\n", "monitoring.on_drift: Input should be 'warn' or 'fail'"),
    ],
)
def test_mistakes_are_refused_naming_the_file_and_key(tmp_path, text, message):
    cfg = tmp_path / "segflow.yml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg, environ={})
    assert str(caught.value).startswith(f"{cfg}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value), "one line"


def test_invalid_yaml_names_file_line_and_column(tmp_path):
    cfg = tmp_path / "segflow.yml"
    cfg.write_text("warehouse:\n  path: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"^{cfg}:3:1: invalid YAML: "):
        load_settings(cfg, environ={})


def test_mistyped_environment_override_is_refused(tmp_path):
    cfg = tmp_path / "segflow.yml"
    cfg.write_text("churn:\n  horizon_days: 30\n")
    with pytest.raises(
        ConfigError, match=r"SEGFLOW__WAREHOUS__PATH: unknown key 'warehous' \(did you mean 'warehouse'\?\)"
    ):
        load_settings(cfg, environ={"SEGFLOW__WAREHOUS__PATH": "/x.duckdb"})
    with pytest.raises(ConfigError, match="'churn.horizon_dayz'"):
        load_settings(cfg, environ={"SEGFLOW__CHURN__HORIZON_DAYZ": "5"})
    # Free-form parts (a source's options) take any key a source of that kind accepts.
    assert load_settings(cfg, environ={"SEGFLOW__SOURCES__EVENTS__PATH": "/e"}).raw["sources"]["events"]["path"] == "/e"


def test_defaults_live_in_one_place_and_the_reference_is_current():
    from segflow.core.config import SegflowConfig, schema_reference

    defaults = SegflowConfig()
    assert load_settings(environ={}).model.churn.horizon_days == defaults.churn.horizon_days
    reference = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert schema_reference() in reference, "docs/configuration.md is stale: segflow config reference regenerates it"


def test_the_cli_exits_2_with_one_line_naming_the_key(tmp_path, capsys):
    from segflow.local.cli import main

    cfg = tmp_path / "segflow.yml"
    cfg.write_text("writeback:\n  crm_ulr: sqlite:///x.db\n")
    assert main(["--config", str(cfg), "config", "check"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"segflow: configuration error: {cfg}: unknown key 'writeback.crm_ulr' (did you mean 'writeback.crm_url'?)"
    )
    with pytest.raises(ConfigError):
        main(["--debug", "--config", str(cfg), "summary"])


def test_helpers():
    assert apply_env_overrides({"churn": {"x": 1}}, {"SEGFLOW__CHURN__REFIT_ON_ALL": "true", "OTHER": "x"}) == {
        "churn": {"x": 1, "refit_on_all": True}
    }
    assert expand_env_refs("x${A}y", {"A": "1"}) == "x1y"
    assert resolve_sqlite_url("sqlite:////abs/x.db", Path("/r")) == "sqlite:////abs/x.db"
    assert resolve_sqlite_url("postgresql://h/db", Path("/r")) == "postgresql://h/db"


def test_repository_config_has_no_secrets():
    text = (REPO_ROOT / "segflow.yml").read_text().lower()
    assert "password:" not in text and "token:" not in text


def test_warehouse_url_selects_the_engine_and_the_dbt_target_follows(tmp_path, capsys, monkeypatch):
    from segflow.core.config import UnsupportedWarehouse, redact_url
    from segflow.core.dbt import dbt_target, warehouse_env

    cfg = tmp_path / "segflow.yml"
    cfg.write_text("warehouse:\n  url: duckdb:///wh/x.duckdb\n")
    duck = load_settings(cfg, environ={})
    # Relative to the config file, as SQLAlchemy reads duckdb:///relative; `path` names the same file.
    assert duck.warehouse_path == tmp_path / "wh" / "x.duckdb"
    assert duck.warehouse_url == f"duckdb:///{tmp_path / 'wh' / 'x.duckdb'}"
    assert dbt_target(duck, environ={}) == "duckdb"
    assert warehouse_env(duck) == {"SEGFLOW_WAREHOUSE_PATH": str(tmp_path / "wh" / "x.duckdb")}
    assert load_settings(environ={}).warehouse_url.startswith("duckdb:////")  # the default: `path`, absolute

    cfg.write_text("warehouse:\n  url: postgresql+psycopg2://seg:${PG_SECRET}@db.example:6543/marketing\n")
    pg = load_settings(cfg, environ={"PG_SECRET": "s3cr%40t"})
    assert pg.warehouse_engine == "postgresql" and dbt_target(pg, environ={}) == "postgres"
    assert dbt_target(pg, environ={"SEGFLOW_DBT_TARGET": "duckdb"}) == "duckdb"  # the variable still wins
    assert warehouse_env(pg) == {
        "SEGFLOW_PG_HOST": "db.example",
        "SEGFLOW_PG_PORT": "6543",
        "SEGFLOW_PG_USER": "seg",
        "SEGFLOW_PG_PASSWORD": "s3cr@t",
        "SEGFLOW_PG_DATABASE": "marketing",
        "SEGFLOW_PG_SSLMODE": "",
        "SEGFLOW_PG_SSLCERT": "",
        "SEGFLOW_PG_SSLKEY": "",
        "SEGFLOW_PG_SSLROOTCERT": "",
        "SEGFLOW_PG_CONNECT_TIMEOUT": "10",
        "SEGFLOW_PG_APPLICATION_NAME": "dbt",
    }
    # libpq's options in the URL reach dbt too; an option dbt could not receive is refused, not half-applied.
    cfg.write_text("warehouse:\n  url: postgresql://seg@db/m?sslmode=verify-full&sslrootcert=/etc/ca.pem\n")
    tls = warehouse_env(load_settings(cfg, environ={}))
    assert tls["SEGFLOW_PG_SSLMODE"] == "verify-full" and tls["SEGFLOW_PG_SSLROOTCERT"] == "/etc/ca.pem"
    cfg.write_text("warehouse:\n  url: postgresql://seg@db/m?options=-csearch_path%3Dx\n")
    with pytest.raises(ConfigError, match="query option.*options.*not supported"):
        load_settings(cfg, environ={}).warehouse_engine  # noqa: B018
    cfg.write_text("warehouse:\n  url: postgresql+psycopg2://seg:${PG_SECRET}@db.example:6543/marketing\n")
    assert redact_url(pg.warehouse_url) == "postgresql+psycopg2://seg:***@db.example:6543/marketing"
    from segflow.local.cli import main

    monkeypatch.setenv("PG_SECRET", "s3cr%40t")
    assert main(["--config", str(cfg), "config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "url: postgresql+psycopg2://seg:***@db.example:6543/marketing" in shown and "s3cr" not in shown
    with pytest.raises(UnsupportedWarehouse, match="postgresql warehouse"):
        pg.warehouse_path  # noqa: B018 - a DuckDB-only task must not fall back to a local file


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://h/db", "unsupported scheme 'mysql'"), ("duckdb:///:memory:", "needs a file"), ("x.duckdb", "scheme")],
)
def test_an_unusable_warehouse_url_is_refused(tmp_path, url, message):
    cfg = tmp_path / "segflow.yml"
    cfg.write_text(f"warehouse:\n  url: '{url}'\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg, environ={})
