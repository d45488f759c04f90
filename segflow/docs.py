"""Build the static dbt docs site (docs/site/index.html), viewable without Airflow or a server."""

from __future__ import annotations

import shutil
import sys

from segflow.airflow_env import DBT_PROJECT_DIR
from segflow.config import REPO_ROOT, load_settings
from segflow.dbt import run_dbt

SITE_DIR = REPO_ROOT / "docs" / "site"


def build_docs(config: str | None = None) -> str:
    settings = load_settings(config)
    # --static inlines manifest and catalog into one HTML file that opens from file://
    run_dbt(settings, ["docs", "generate", "--static"], vars={"as_of": None})
    SITE_DIR.mkdir(parents=True, exist_ok=True)
    target = DBT_PROJECT_DIR / "target"
    shutil.copyfile(target / "static_index.html", SITE_DIR / "index.html")
    for name in ("manifest.json", "catalog.json"):
        if (target / name).exists():
            shutil.copyfile(target / name, SITE_DIR / name)
    return str(SITE_DIR / "index.html")


if __name__ == "__main__":
    print(f"dbt docs: {build_docs(sys.argv[1] if len(sys.argv) > 1 else None)}")
