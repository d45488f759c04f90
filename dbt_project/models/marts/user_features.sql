-- Published user features: the latest as_of ever published (from the history, which the quality gates fed).
-- Backfilling an earlier date replaces only that date's history partition; this table stays on the latest.
select history.*
from {{ ref('user_features_history') }} as history
where history.as_of = (select max(latest.as_of) from {{ ref('user_features_history') }} as latest)
