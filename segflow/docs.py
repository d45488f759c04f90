"""Build the static documentation sites, viewable from file:// without Airflow or a server:
docs/site/index.html (dbt docs) and docs/site/gx/index.html (Great Expectations Data Docs)."""

from __future__ import annotations

import shutil
import sys

from segflow.config import REPO_ROOT, load_settings
from segflow.dbt import DBT_PROJECT_DIR, run_dbt

SITE_DIR = REPO_ROOT / "docs" / "site"


def copy_data_docs(settings) -> str | None:
    """Copy the GX Data Docs site (kept up to date by every validation run) next to the dbt docs."""
    from segflow.quality import data_docs_index

    index = data_docs_index(settings)
    if not index.exists():
        return None
    shutil.rmtree(SITE_DIR / "gx", ignore_errors=True)
    shutil.copytree(index.parent, SITE_DIR / "gx")
    return str(SITE_DIR / "gx" / "index.html")


def build_docs(config: str | None = None) -> tuple[str, str | None]:
    settings = load_settings(config)
    # --static inlines manifest and catalog into one HTML file that opens from file://
    run_dbt(settings, ["docs", "generate", "--static"], vars={"as_of": None})
    SITE_DIR.mkdir(parents=True, exist_ok=True)
    target = DBT_PROJECT_DIR / "target"
    shutil.copyfile(target / "static_index.html", SITE_DIR / "index.html")
    for name in ("manifest.json", "catalog.json"):
        if (target / name).exists():
            shutil.copyfile(target / name, SITE_DIR / name)
    return str(SITE_DIR / "index.html"), copy_data_docs(settings)


if __name__ == "__main__":
    dbt_site, gx_site = build_docs(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"dbt docs:      {dbt_site}")
    print(f"GX Data Docs:  {gx_site or 'none yet: run the pipeline first (make demo)'}")
