-- The sources configured in segflow.yml, as the latest extract recorded them. Models use it to tell an absent
-- dataset (no engagement features without analytics) from a quiet day (zero activity).
select
    source,
    dataset,
    kind
from {{ source('raw', 'sources') }}
