{# Small dispatching helpers so models stay portable across adapters (DuckDB default, PostgreSQL). #}
{% macro days_between(start_expr, end_expr) -%}
    {{ return(adapter.dispatch('days_between', 'segflow')(start_expr, end_expr)) }}
{%- endmacro %}
{% macro default__days_between(start_expr, end_expr) -%}
    (cast({{ end_expr }} as date) - cast({{ start_expr }} as date))
{%- endmacro %}

{% macro sha256_hex(expr) -%}
    {{ return(adapter.dispatch('sha256_hex', 'segflow')(expr)) }}
{%- endmacro %}
{% macro default__sha256_hex(expr) -%}sha256({{ expr }}){%- endmacro %}
{% macro postgres__sha256_hex(expr) -%}encode(sha256(convert_to({{ expr }}, 'UTF8')), 'hex'){%- endmacro %}

{# Salted hash of a normalised identifier (email, phone): PII never leaves staging in clear text. #}
{% macro pii_hash(expr) -%}
    {{ sha256_hex("'" ~ env_var('SEGFLOW_PII_SALT', 'segflow-dev-salt') ~ "' || lower(trim(" ~ expr ~ "))") }}
{%- endmacro %}
