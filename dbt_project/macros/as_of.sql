{#
  The dates of a build reach dbt as environment variables that segflow sets for each invocation (segflow.core.dbt
  DATE_ENV), read only while executing: they are not part of what dbt parses, so dbt's partial parsing carries
  over from one date to the next (a change of --vars re-parses the whole project, ~5 s per dbt invocation).
  var('as_of') / var('feature_dates') still win when given (unit-test overrides, ad-hoc `dbt build --vars`).
#}

{# The as-of date of this build: var('as_of'), else SEGFLOW_AS_OF (YYYY-MM-DD), else today. Everything
   point-in-time filters on it. #}
{% macro as_of_date() -%}
    {%- set value = var('as_of', none) -%}
    {%- if (value is none or value == '') and execute -%}{%- set value = env_var('SEGFLOW_AS_OF', '') -%}{%- endif -%}
    {%- if value is none or value == '' -%}current_date{%- else -%}cast('{{ value }}' as date){%- endif -%}
{%- endmacro %}

{# Exclusive upper bound for timestamps known on the as-of date: the end of that day. #}
{% macro as_of_end() -%}
    ({{ as_of_date() }} + interval '1 day')
{%- endmacro %}

{# Feature dates (snapshots) of a churn training set: var('feature_dates') or SEGFLOW_FEATURE_DATES, a list of
   YYYY-MM-DD (comma-separated in the variable); default the single date as_of minus the horizon. Rendered as a
   SQL list of dates for `in (...)`. #}
{% macro feature_dates_list() -%}
    {%- set values = var('feature_dates', none) -%}
    {%- if (values is none or values == '' or values == []) and execute -%}
        {%- set values = env_var('SEGFLOW_FEATURE_DATES', '') -%}
    {%- endif -%}
    {%- if values is none or values == '' or values == [] -%}
        ({{ as_of_date() }} - {{ var('churn_horizon_days') }})
    {%- else -%}
        {%- if values is string -%}{%- set values = values.split(',') -%}{%- endif -%}
        {%- for value in values -%}cast('{{ value | trim }}' as date){{ ', ' if not loop.last }}{%- endfor -%}
    {%- endif -%}
{%- endmacro %}

{# Where a build puts its candidates: SEGFLOW_AUDIT_SCHEMA, one schema per as-of date (write-audit-publish; runs
   of different dates never read each other's candidates) or the training builds' own, else `audit`. A relation's
   schema is fixed when dbt parses, so the audit models call this in their config(): dbt records that those files
   read the variable and re-parses just them when it changes. #}
{% macro audit_schema() -%}
    {%- set value = env_var('SEGFLOW_AUDIT_SCHEMA', '') | trim -%}
    {{- return(value if value else 'audit') -}}
{%- endmacro %}
