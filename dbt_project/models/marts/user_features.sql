-- Published user features: the latest as_of ever published (from the history, which the quality gates fed).
-- Backfilling an earlier date replaces only that date's history partition; this table stays on the latest.
select *
from {{ ref('user_features_history') }}
where as_of = (select max(as_of) from {{ ref('user_features_history') }})
