"""docker-compose.yml (no Docker engine runs here): structure and secret hygiene. Full `config`
validation against the compose schema belongs to the operations work."""

import re

import yaml

from segflow.config import REPO_ROOT


def test_production_stack_services_and_no_inline_secrets():
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = set(compose["services"])
    assert {"postgres", "redis", "minio", "mlflow", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer", "airflow-worker"} <= services
    for name in ("airflow-scheduler", "airflow-worker"):
        env = compose["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    # Every password-like value is an environment reference, never a literal.
    keys = list(re.finditer(r"^\s*([A-Z_]*(?:PASSWORD|SECRET|SALT)[A-Z_]*):\s*(.+)$", text, flags=re.MULTILINE))
    assert len(keys) >= 4
    for match in keys:
        assert match.group(2).startswith("${"), match.group(0)
