{# Keep one row per `key`: the first by `order_by` (e.g. the latest load). Used by staging and incremental models. #}
{% macro latest_version(relation, key, order_by, where=none) %}
select {{ adapter.dispatch('columns_without_version_rank', 'segflow')(relation) }}
from (
    select *, row_number() over (partition by {{ key }} order by {{ order_by }}) as _version_rank
    from {{ relation }}
    {% if where %}where {{ where }}{% endif %}
) as versions
where _version_rank = 1
{% endmacro %}

{% macro default__columns_without_version_rank(relation) -%}
    * exclude (_version_rank)
{%- endmacro %}

{# PostgreSQL has no SELECT * EXCLUDE: list the relation's columns (it is built before its children). #}
{% macro postgres__columns_without_version_rank(relation) -%}
    {%- set columns = adapter.get_columns_in_relation(relation) | map(attribute='name') | list -%}
    {{ columns | join(', ') if columns else '*' }}
{%- endmacro %}
