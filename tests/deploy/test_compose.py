"""docker-compose.yml (no Docker engine runs here): validated by Debian's docker-compose (`config`, which checks
the file against the Compose schema and resolves every variable), plus structure and secret hygiene."""

import re
import subprocess

import pytest
import yaml

from segflow.core.config import REPO_ROOT

SECRETS = {
    "POSTGRES_PASSWORD": "p",
    "SEGFLOW_PII_SALT": "s",
    "MINIO_ROOT_USER": "u",
    "MINIO_ROOT_PASSWORD": "m",
    "AIRFLOW_JWT_SECRET": "j",
    "AIRFLOW_SECRET_KEY": "k",
}


def compose_config(path, env) -> subprocess.CompletedProcess:
    from tests.support.services import program

    binary = program("docker-compose")
    return subprocess.run(
        [binary, "-f", str(path), "config"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )


def test_compose_file_is_valid_and_resolves(tmp_path):
    result = compose_config(REPO_ROOT / "docker-compose.yml", SECRETS)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert (
        resolved["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        == "postgresql+psycopg2://airflow:p@postgres/airflow"
    )
    assert resolved["airflow-worker"]["command"] in (["airflow", "celery", "worker"], "airflow celery worker")
    assert resolved["airflow-worker"]["deploy"]["replicas"] == 2
    # The warehouse is PostgreSQL (what tests/e2e/test_celery_stack.py runs): no DuckDB file on a shared volume.
    worker = resolved["airflow-worker"]["environment"]
    assert worker["SEGFLOW__WAREHOUSE__URL"] == "postgresql://airflow:p@postgres:5432/warehouse"
    assert worker["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert "SEGFLOW__WAREHOUSE__PATH" not in worker and "warehouse" not in (
        yaml.safe_load(result.stdout)["volumes"] or {}
    )
    assert "airflow-init" in resolved["airflow-apiserver"]["depends_on"]


def test_compose_validation_catches_errors(tmp_path):
    # A secret left unset is refused, naming it.
    result = compose_config(
        REPO_ROOT / "docker-compose.yml", {k: v for k, v in SECRETS.items() if k != "POSTGRES_PASSWORD"}
    )
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr
    # So is a key the Compose schema does not know.
    broken = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    broken["services"]["redis"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = compose_config(path, SECRETS)
    assert result.returncode != 0 and "restart_policy" in result.stderr


def test_production_stack_services_and_no_inline_secrets():
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = set(compose["services"])
    assert {
        "postgres",
        "redis",
        "minio",
        "mlflow",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
        "segment-api",
        "stream-consumer",
    } <= services
    for name in ("airflow-scheduler", "airflow-worker"):
        env = compose["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    # Every password-like value is an environment reference, never a literal.
    keys = list(re.finditer(r"^\s*([A-Z_]*(?:PASSWORD|SECRET|SALT)[A-Z_]*):\s*(.+)$", text, flags=re.MULTILINE))
    assert len(keys) >= 6
    for match in keys:
        assert match.group(2).startswith("${"), match.group(0)


@pytest.mark.parametrize("path", ["Dockerfile", "deploy/postgres-init.sql"])
def test_files_the_stack_mounts_or_builds_exist(path):
    assert (REPO_ROOT / path).exists()
