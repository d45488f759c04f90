{% test dbt_utils_unique_combination(model, columns) %}
{# Rows whose combination of `columns` is not unique (named like dbt_utils' test; dbt deps is unavailable here). #}
select {{ columns | join(', ') }}, count(*) as n
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
