-- Published user features: the latest as_of published. Backfilling an earlier date changes only that date's
-- partition of user_features_history; this stays on the latest.
{{ config(materialized='view') }}
select history.*
from {{ ref('user_features_history') }} as history
where history.as_of = (select max(latest.as_of) from {{ ref('user_features_history') }} as latest)
