from pathlib import Path

import pytest

from segflow.core.config import REPO_ROOT, apply_env_overrides, expand_env_refs, load_settings, resolve_sqlite_url


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
    with pytest.raises(ValueError, match="CRM_PASSWORD"):
        load_settings(cfg, environ={})


def test_explicit_config_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yml", environ={})


def test_helpers():
    assert apply_env_overrides({"a": {"b": 1}}, {"SEGFLOW__A__C": "true", "OTHER": "x"}) == {"a": {"b": 1, "c": True}}
    assert expand_env_refs("x${A}y", {"A": "1"}) == "x1y"
    assert resolve_sqlite_url("sqlite:////abs/x.db", Path("/r")) == "sqlite:////abs/x.db"
    assert resolve_sqlite_url("postgresql://h/db", Path("/r")) == "postgresql://h/db"


def test_repository_config_has_no_secrets():
    text = (REPO_ROOT / "segflow.yml").read_text().lower()
    assert "password:" not in text and "token:" not in text
