"""The static server of `make ui` for the dbt docs (/) and GX Data Docs (/gx/).

GX's own index page builds its tables with scripts from public CDNs, so it is empty on a machine without
internet access. /gx/ therefore lists the validation pages themselves (plain HTML, readable offline), newest
first, read from disk on every request so the latest validation is always there. GX's index stays at
/gx/index.html.
"""

from __future__ import annotations

import argparse
import html
import os
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def validation_pages(gx_site: Path) -> list[dict]:
    """Every validation result page: validations/<suite>/<run name>/<run time>/<batch>.html, newest first."""
    pages = []
    root = gx_site / "validations"
    for page in root.glob("*/*/*/*.html") if root.is_dir() else []:
        suite, run_name, run_time = page.relative_to(root).parts[:3]
        pages.append(
            {
                "suite": suite,
                "run_name": run_name,
                "run_time": run_time,
                "path": page.relative_to(gx_site).as_posix(),
                "mtime": page.stat().st_mtime,
            }
        )
    return sorted(pages, key=lambda p: (p["run_time"], p["mtime"]), reverse=True)


def render_index(gx_site: Path) -> str:
    pages = validation_pages(gx_site)
    rows = "\n".join(
        f"<tr><td>{html.escape(p['run_time'])}</td><td>{html.escape(p['suite'])}</td><td>{html.escape(p['run_name'])}</td>"
        f'<td><a href="{html.escape(p["path"])}">result</a></td></tr>'
        for p in pages
    )
    latest = (
        (
            f'<p>Latest validation: <a id="latest" href="{html.escape(pages[0]["path"])}">{html.escape(pages[0]["suite"])}, '
            f"run {html.escape(pages[0]['run_name'])} at {html.escape(pages[0]['run_time'])}</a></p>"
        )
        if pages
        else "<p>No validation yet: run the pipeline (make demo).</p>"
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>GX Data Docs - validation results</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}</style>
</head><body><h1>Great Expectations Data Docs: validation results</h1>
{latest}
<p>{len(pages)} validation results, newest first (listed {datetime.now(UTC):%Y-%m-%d %H:%M} UTC).
GX's own index (its scripts load from the internet): <a href="index.html">index.html</a>.</p>
<table><tr><th>run time (UTC)</th><th>suite</th><th>run</th><th></th></tr>
{rows}
</table></body></html>"""


class DocsHandler(SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.split("?")[0] in ("/gx", "/gx/"):
            body = render_index(Path(self.directory) / "gx").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format, *args):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--directory", default=os.getcwd())
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.bind, args.port), partial(DocsHandler, directory=args.directory))
    server.serve_forever()


if __name__ == "__main__":
    main()
