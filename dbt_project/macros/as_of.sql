{# The as-of date of this build: var('as_of') (YYYY-MM-DD) or today. Everything point-in-time filters on it. #}
{% macro as_of_date() -%}
    {%- set value = var('as_of', none) -%}
    {%- if value is none or value == '' -%}current_date{%- else -%}cast('{{ value }}' as date){%- endif -%}
{%- endmacro %}

{# Exclusive upper bound for timestamps known on the as-of date: the end of that day. #}
{% macro as_of_end() -%}
    ({{ as_of_date() }} + interval '1 day')
{%- endmacro %}

{# Feature date of a churn training set: var('feature_as_of'), default as_of minus the horizon. #}
{% macro feature_as_of_date() -%}
    {%- set value = var('feature_as_of', none) -%}
    {%- if value is none or value == '' -%}
        ({{ as_of_date() }} - {{ var('churn_horizon_days') }})
    {%- else -%}
        cast('{{ value }}' as date)
    {%- endif -%}
{%- endmacro %}
