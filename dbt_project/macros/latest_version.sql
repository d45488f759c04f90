{# Keep one row per `key`: the first by `order_by` (e.g. the latest load). Used by staging and incremental models. #}
{% macro latest_version(relation, key, order_by, where=none) %}
select * exclude (_version_rank)
from (
    select *, row_number() over (partition by {{ key }} order by {{ order_by }}) as _version_rank
    from {{ relation }}
    {% if where %}where {{ where }}{% endif %}
) as versions
where _version_rank = 1
{% endmacro %}
