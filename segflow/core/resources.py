"""Files that ship with segflow beside its code: the dbt project, the Great Expectations suites, the DAGs and
Airflow's local settings.

In a source checkout (and its editable install, `make install`) they are the repository's own folders, where
analysts edit them. A wheel carries copies under ``segflow/_bundle/`` (pyproject.toml, force-include), so an
installed segflow finds them without a clone; a team's configuration folder then holds only its own files.
"""

from __future__ import annotations

from pathlib import Path

from segflow.core.config import REPO_ROOT

PACKAGE_DIR = Path(__file__).resolve().parents[1]
BUNDLE_DIR = PACKAGE_DIR / "_bundle"


def bundled(relative: str) -> Path:
    """The installed copy of a shipped folder, else the source checkout's."""
    packaged = BUNDLE_DIR / relative
    return packaged if packaged.exists() else REPO_ROOT / relative


DBT_PROJECT_DIR = bundled("dbt_project")
EXPECTATIONS_DIR = bundled("expectations")
DAGS_FOLDER = bundled("dags")
AIRFLOW_SETTINGS_DIR = bundled("deploy/airflow")  # airflow_local_settings.py (scheduler preloading)
