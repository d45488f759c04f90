"""What segflow ships beside its code (the dbt project, GX suites, DAGs, Airflow settings) is found from the
installation: the source checkout's folders, or the copies a wheel carries under segflow/_bundle."""

from __future__ import annotations

import tomllib

from segflow.core import resources
from segflow.core.config import REPO_ROOT


def test_a_source_checkout_uses_its_own_folders():
    assert resources.DBT_PROJECT_DIR == REPO_ROOT / "dbt_project"
    assert (resources.EXPECTATIONS_DIR / "raw_transactions.json").is_file()
    assert (resources.DAGS_FOLDER / "segflow_build.py").is_file()
    assert (resources.AIRFLOW_SETTINGS_DIR / "airflow_local_settings.py").is_file()


def test_an_installed_package_uses_the_bundle(tmp_path, monkeypatch):
    bundle = tmp_path / "_bundle"
    (bundle / "dbt_project").mkdir(parents=True)
    monkeypatch.setattr(resources, "BUNDLE_DIR", bundle)
    assert resources.bundled("dbt_project") == bundle / "dbt_project"
    assert resources.bundled("expectations") == REPO_ROOT / "expectations", "absent from the bundle: the checkout's"


def test_the_wheel_carries_every_shipped_folder():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    shipped = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for name in ("dbt_project", "expectations", "dags", "deploy/airflow"):
        assert shipped[name] == f"segflow/_bundle/{name}"
        assert resources.bundled(name).is_dir()


def test_a_configuration_outside_the_clone_needs_only_its_own_files(tmp_path):
    from segflow.core.config import load_settings
    from segflow.quality.gates import expectations_dir

    cfg = tmp_path / "team" / "segflow.yml"
    cfg.parent.mkdir()
    cfg.write_text("sources:\n  transactions:\n    path: drops/orders\n")
    settings = load_settings(cfg, environ={})
    assert expectations_dir(settings) == resources.EXPECTATIONS_DIR
    assert settings.raw["sources"]["transactions"]["path"] == str(cfg.parent / "drops" / "orders")
