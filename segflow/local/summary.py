"""The end-of-run summary: rule segments, personas, churn-risk bands, and where to look next."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from segflow.core.config import Settings, redact_url
from segflow.core.engines import connect_engine


def summary_data(settings: Settings) -> dict:
    with connect_engine(settings.warehouse_url) as engine:
        rows = engine.fetchall

        return {
            "as_of": rows("SELECT max(as_of) FROM marts.user_scores")[0][0],
            "users": rows("SELECT count(*) FROM marts.user_features")[0][0],
            "segments": rows("""SELECT segment_name, count(*) AS members, count(*) FILTER (WHERE is_primary) AS primary_members
                                FROM marts.user_segments GROUP BY 1 ORDER BY min(priority), 1"""),
            "personas": rows("""SELECT cluster_id, persona, count(*) AS users, avg(churn_probability) AS churn,
                                       avg(clv_12m) AS clv
                                FROM marts.user_scores GROUP BY 1, 2 ORDER BY 1"""),
            "risk": rows("""SELECT churn_risk_band, count(*), avg(clv_12m), sum(clv_12m) FROM marts.user_scores GROUP BY 1
                            ORDER BY CASE churn_risk_band WHEN 'high' THEN 1 WHEN 'medium' THEN 2 WHEN 'low' THEN 3
                                              WHEN 'prospect' THEN 4 END"""),
            # The leading reason of each user at high risk, most frequent first.
            "reasons": rows("""SELECT split_part(churn_reasons, '=', 1) AS feature, count(*) FROM marts.user_scores
                               WHERE churn_risk_band = 'high' AND churn_reasons IS NOT NULL
                               GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3"""),
            "example": rows("""SELECT user_id, churn_probability, churn_reasons FROM marts.user_scores
                               WHERE churn_risk_band = 'high' AND churn_reasons IS NOT NULL
                               ORDER BY clv_12m DESC NULLS LAST, user_id LIMIT 1"""),
            "versions": rows(
                """SELECT max(clusterer_version), max(churn_model_version), max(clv_model_version)
                   FROM marts.user_scores"""
            )[0],
            "monitoring": rows("""SELECT "check", model_name, subject, value, reference_value, threshold FROM ml.model_monitoring
                                  WHERE status = 'warning' AND as_of = (SELECT max(as_of) FROM marts.user_scores)
                                  ORDER BY 1, value DESC""")
            if rows("""SELECT count(*) FROM information_schema.tables
                                  WHERE table_schema = 'ml' AND table_name = 'model_monitoring'""")[0][0]
            else [],
        }


def print_summary(settings: Settings, console: Console | None = None) -> None:
    console = console or Console()
    data = summary_data(settings)
    total = max(data["users"], 1)
    console.rule(f"segflow — {data['users']:,} users scored as of {data['as_of']}")
    seg = Table(title="Rule segments (marts.user_segments)")
    for col in ("segment", "members", "primary"):
        seg.add_column(col, justify="right" if col != "segment" else "left")
    for name, members, primary in data["segments"]:
        seg.add_row(name, f"{members:,}", f"{primary:,}")
    console.print(seg)
    per = Table(title=f"Personas (clusterer v{data['versions'][0]})")
    for col in ("cluster", "persona", "users", "share", "avg churn p", "avg CLV 12m"):
        per.add_column(col, justify="left" if col == "persona" else "right")
    for cid, persona, users, churn, clv in data["personas"]:
        per.add_row(
            str(cid),
            persona,
            f"{users:,}",
            f"{users / total:.0%}",
            "-" if churn is None else f"{churn:.2f}",
            "-" if clv is None else f"{clv:,.0f}",
        )
    console.print(per)
    risk = Table(
        title=f"Churn risk and lifetime value (churn model v{data['versions'][1]}, lifetime value v{data['versions'][2]})"
    )
    for col in ("band", "users", "share", "avg CLV 12m", "CLV 12m at stake"):
        risk.add_column(col, justify="left" if col == "band" else "right")
    for band, users, clv, clv_sum in data["risk"]:
        risk.add_row(
            band,
            f"{users:,}",
            f"{users / total:.0%}",
            "-" if clv is None else f"{clv:,.0f}",
            "-" if clv_sum is None else f"{clv_sum:,.0f}",
        )
    console.print(risk)
    if data["reasons"]:
        leading = ", ".join(f"{feature} ({n:,})" for feature, n in data["reasons"])
        console.print(f"Why users are at high risk - leading reasons: {leading}")
        for user, probability, reasons in data["example"]:
            console.print(f"  e.g. {user} (churn p {probability:.2f}): {reasons}", markup=False, highlight=False)
    if data["monitoring"]:
        console.print(f"[yellow]Monitoring warnings ({len(data['monitoring'])}, ml.model_monitoring):[/yellow]")
        for check, model, subject, value, ref, limit in data["monitoring"][:8]:
            detail = f"PSI {value:.2f} > {limit}" if check == "feature_psi" else f"{ref:.2f} -> {value:.2f}"
            console.print(f"  {check:<16} {model:<24} {subject}: {detail}")
    wb = settings.raw["writeback"]
    from segflow.local.services import urls

    links = urls(settings)
    warehouse = (
        f"duckdb {settings.warehouse_path}"
        if settings.warehouse_engine == "duckdb"
        else redact_url(settings.warehouse_url)
    )
    console.print(
        "Where to look next:\n"
        f"  warehouse     {warehouse}  (marts.user_features, user_segments, user_scores)\n"
        + (
            f"  CRM table     {wb.get('crm_table', 'crm_segments')} in {wb['crm_url']}\n"
            if wb.get("crm_url")
            else "  CRM table     (no write-back: writeback.crm_url is not set)\n"
        )
        + f"  activation    {wb['export_dir']}/as_of={data['as_of']}/segments.csv|parquet\n"
        f"  UIs           make ui  -> Airflow {links['airflow']}, MLflow {links['mlflow']}, dbt docs {links['dbt_docs']},\n"
        f"                GX Data Docs {links['gx_data_docs']}  (make ui-stop stops them)\n"
        f"  segment API   segflow api-key create, then segflow serve -> {links['segment_api']}v1/profiles/<id> "
        "(make ui starts it too; docs/serving.md)",
        soft_wrap=True,
    )
