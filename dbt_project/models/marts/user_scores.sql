-- The current scores: the latest as_of ever scored. Backfilling an earlier date leaves it on the latest.
{{ config(materialized='view') }}
select *
from {{ ref('user_scores_history') }}
where as_of = (select max(as_of) from {{ ref('user_scores_history') }})
