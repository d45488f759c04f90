{% test not_null_when_dataset_configured(model, column_name, dataset, unless=none) %}
{# Null is allowed only when no source delivers `dataset` (e.g. engagement features without analytics events),
   or where the row meets `unless` (e.g. users without tracking consent, whose behaviour is not used). #}
select {{ column_name }}
from {{ model }}
where {{ column_name }} is null
  and exists (select 1 from {{ source('raw', 'sources') }} where dataset = '{{ dataset }}')
  {% if unless %}and not ({{ unless }}){% endif %}
{% endtest %}
