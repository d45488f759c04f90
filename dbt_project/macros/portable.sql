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


{# Completed years between two dates (an age): 1990-07-01 -> 2026-06-30 is 35, not the 36 year boundaries. #}
{% macro years_between(start_expr, end_expr) -%}
    {{ return(adapter.dispatch('years_between', 'segflow')(start_expr, end_expr)) }}
{%- endmacro %}
{% macro default__years_between(start_expr, end_expr) -%}
    date_sub('year', cast({{ start_expr }} as date), cast({{ end_expr }} as date))
{%- endmacro %}
{% macro postgres__years_between(start_expr, end_expr) -%}
    cast(date_part('year', age(cast({{ end_expr }} as date), cast({{ start_expr }} as date))) as integer)
{%- endmacro %}

{# round(x, n) for any numeric type (PostgreSQL only rounds numeric to n places). #}
{% macro round_to(expr, places) -%}
    {{ return(adapter.dispatch('round_to', 'segflow')(expr, places)) }}
{%- endmacro %}
{% macro default__round_to(expr, places) -%}round({{ expr }}, {{ places }}){%- endmacro %}
{% macro postgres__round_to(expr, places) -%}cast(round(cast({{ expr }} as numeric), {{ places }}) as double precision){%- endmacro %}

{# Boolean: does the text match the regular expression? #}
{% macro regex_matches(expr, pattern) -%}
    {{ return(adapter.dispatch('regex_matches', 'segflow')(expr, pattern)) }}
{%- endmacro %}
{% macro default__regex_matches(expr, pattern) -%}regexp_matches({{ expr }}, '{{ pattern }}'){%- endmacro %}
{% macro postgres__regex_matches(expr, pattern) -%}({{ expr }} ~ '{{ pattern }}'){%- endmacro %}

{# A JSON object (as text) of the named columns: {"col": value, ...}. #}
{% macro json_object_text(columns) -%}
    {{ return(adapter.dispatch('json_object_text', 'segflow')(columns)) }}
{%- endmacro %}
{% macro default__json_object_text(columns) -%}
    cast(json_object({% for col in columns %}'{{ col }}', {{ col }}{% if not loop.last %}, {% endif %}{% endfor %}) as varchar)
{%- endmacro %}
{% macro postgres__json_object_text(columns) -%}
    cast(json_build_object({% for col in columns %}'{{ col }}', {{ col }}{% if not loop.last %}, {% endif %}{% endfor %}) as varchar)
{%- endmacro %}

{# Free-text tags as one normalised text: lower case, split on , ; | /, inner whitespace collapsed, trimmed,
   deduplicated, sorted, joined with ','; null when no tag remains. 'Garden; books ,BOOKS' -> 'books,garden'. #}
{% macro normalised_tags(expr) -%}
    {{ return(adapter.dispatch('normalised_tags', 'segflow')(expr)) }}
{%- endmacro %}
{% macro default__normalised_tags(expr) -%}
    nullif(array_to_string(list_sort(list_distinct(list_filter(
        list_transform(string_split_regex(lower({{ expr }}), '[,;|/]'), lambda t: trim(regexp_replace(t, '\s+', ' ', 'g'))),
        lambda t: t <> ''
    ))), ','), '')
{%- endmacro %}
{% macro postgres__normalised_tags(expr) -%}
    nullif(array_to_string(array(
        select distinct tag collate "C" as tag from (
            select trim(regexp_replace(t, '\s+', ' ', 'g')) as tag
            from unnest(regexp_split_to_array(lower({{ expr }}), '[,;|/]')) as t
        ) as cleaned
        where tag <> ''
        order by 1
    ), ','), '')
{%- endmacro %}
{% macro spark__normalised_tags(expr) -%}
    nullif(array_join(array_sort(array_distinct(filter(
        transform(split(lower({{ expr }}), '[,;|/]'), t -> trim(regexp_replace(t, '\\s+', ' '))),
        t -> t != ''
    ))), ','), '')
{%- endmacro %}

-- A double-precision float (PostgreSQL makes numeric of decimal literals and of integer ratios).
{% macro as_double(expr) -%}
    {{ return(adapter.dispatch('as_double', 'segflow')(expr)) }}
{%- endmacro %}
{% macro default__as_double(expr) -%}cast({{ expr }} as double){%- endmacro %}
{% macro postgres__as_double(expr) -%}cast({{ expr }} as double precision){%- endmacro %}

{# Refresh the planner's statistics of a table just built (a post-hook; nothing to do where the engine keeps them). #}
{% macro analyze_table(relation) -%}
    {{ return(adapter.dispatch('analyze_table', 'segflow')(relation)) }}
{%- endmacro %}
{% macro default__analyze_table(relation) -%}{%- endmacro %}
{% macro postgres__analyze_table(relation) -%}analyze {{ relation }}{%- endmacro %}
