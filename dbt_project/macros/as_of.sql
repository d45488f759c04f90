{# The as-of date of this build: var('as_of') (YYYY-MM-DD) or today. Everything point-in-time filters on it. #}
{% macro as_of_date() -%}
    {%- set value = var('as_of', none) -%}
    {%- if value is none or value == '' -%}current_date{%- else -%}cast('{{ value }}' as date){%- endif -%}
{%- endmacro %}

{# Exclusive upper bound for timestamps known on the as-of date: the end of that day. #}
{% macro as_of_end() -%}
    ({{ as_of_date() }} + interval '1 day')
{%- endmacro %}

{# Feature dates (snapshots) of a churn training set: var('feature_dates'), a list of YYYY-MM-DD; default
   the single date as_of minus the horizon. Rendered as a SQL list of dates for `in (...)`. #}
{% macro feature_dates_list() -%}
    {%- set values = var('feature_dates', none) -%}
    {%- if values is none or values == '' or values == [] -%}
        ({{ as_of_date() }} - {{ var('churn_horizon_days') }})
    {%- else -%}
        {%- if values is string -%}{%- set values = values.split(',') -%}{%- endif -%}
        {%- for value in values -%}cast('{{ value | trim }}' as date){{ ', ' if not loop.last }}{%- endfor -%}
    {%- endif -%}
{%- endmacro %}
