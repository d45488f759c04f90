"""Build the static documentation sites, viewable from file:// without Airflow or a server:
<ui.docs_dir>/index.html (dbt docs; default docs/site) and <ui.docs_dir>/gx/index.html (GX Data Docs)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from segflow.core.config import load_settings
from segflow.core.dbt import run_dbt, target_dir


def site_dir(settings) -> Path:
    return Path(settings.get("ui", "docs_dir"))


def link_data_docs(settings) -> str | None:
    """Put the GX Data Docs site next to the dbt docs as a link, so it shows every validation since, not a copy
    of the day the docs were built (every validation run updates the site in place)."""
    from segflow.quality.gates import data_docs_index

    index = data_docs_index(settings)
    if not index.exists():
        return None
    target = site_dir(settings) / "gx"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.symlink_to(index.parent, target_is_directory=True)
    return str(target / "index.html")


def build_docs(config: str | None = None, settings=None) -> tuple[str, str | None]:
    settings = settings or load_settings(config)
    site = site_dir(settings)
    # --static inlines manifest and catalog into one HTML file that opens from file://
    run_dbt(settings, ["docs", "generate", "--static"], vars={"as_of": None})
    site.mkdir(parents=True, exist_ok=True)
    target = target_dir(settings)
    shutil.copyfile(target / "static_index.html", site / "index.html")
    for name in ("manifest.json", "catalog.json"):
        if (target / name).exists():
            shutil.copyfile(target / name, site / name)
    return str(site / "index.html"), link_data_docs(settings)


if __name__ == "__main__":
    dbt_site, gx_site = build_docs(sys.argv[1] if len(sys.argv) > 1 else None)
    print(f"dbt docs:      {dbt_site}")
    print(f"GX Data Docs:  {gx_site or 'none yet: run the pipeline first (make demo)'}")
