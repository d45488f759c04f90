"""Credentials from Airflow connections (`conn_id` in segflow.yml).

Airflow resolves a connection from its secrets backends: inside tasks through the Task SDK, elsewhere from
`AIRFLOW_CONN_<ID>` environment variables (URI or JSON) — so the same config works in the scheduler, in
`segflow run` and in tests, and no secret is ever written to segflow.yml.
"""

from __future__ import annotations

from dataclasses import dataclass

# Airflow connection types whose URI scheme differs from SQLAlchemy's dialect name.
SQLALCHEMY_SCHEMES = {
    "postgres": "postgresql+psycopg2",
    "postgresql": "postgresql+psycopg2",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mssql": "mssql+pyodbc",
}


@dataclass(frozen=True)
class ConnectionInfo:
    conn_type: str
    host: str | None
    port: int | None
    schema: str | None
    login: str | None
    password: str | None
    extra: dict


def get_connection(conn_id: str) -> ConnectionInfo:
    from airflow.sdk import Connection

    try:
        conn = Connection.get(conn_id)
    except Exception as exc:  # the SDK raises its own not-found error types
        raise LookupError(
            f"Airflow connection {conn_id!r} is not defined (set it in the Airflow UI or as "
            f"AIRFLOW_CONN_{conn_id.upper()})"
        ) from exc
    return ConnectionInfo(
        conn.conn_type or "",
        conn.host,
        conn.port,
        conn.schema,
        conn.login,
        conn.password,
        dict(conn.extra_dejson or {}),
    )


def sqlalchemy_url(conn_id: str) -> str:
    """A SQLAlchemy URL for a database connection (passwords are URL-escaped by SQLAlchemy)."""
    from sqlalchemy.engine import URL

    info = get_connection(conn_id)
    if info.conn_type == "sqlite":
        return f"sqlite:///{info.host or info.schema}"
    driver = SQLALCHEMY_SCHEMES.get(info.conn_type, info.conn_type)
    return URL.create(
        driver, username=info.login, password=info.password, host=info.host, port=info.port, database=info.schema
    ).render_as_string(hide_password=False)
