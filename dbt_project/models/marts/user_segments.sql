-- Published rule-segment memberships: the latest as_of published (see user_features).
{{ config(materialized='view') }}
select history.*
from {{ ref('user_segment_history') }} as history
where history.as_of = (select max(latest.as_of) from {{ ref('user_segment_history') }} as latest)
