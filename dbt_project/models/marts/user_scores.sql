-- The current scores: the latest as_of ever scored. Backfilling an earlier date leaves it on the latest.
{{ config(materialized='view') }}
select history.*
from {{ ref('user_scores_history') }} as history
where history.as_of = (select max(latest.as_of) from {{ ref('user_scores_history') }} as latest)
