-- Entered / exited events between consecutive published as_of dates (one partition per as_of, replaced on rerun).
-- A build recomputes its own date and the next published date after it: backfilling a gap changes what the
-- next date is compared with, and the result must not depend on the order dates were built in.
-- On the first as_of ever published every membership counts as entered (previous_as_of is null).
{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='as_of') }}
with published_dates as (
    select distinct as_of from {{ ref('user_segment_history') }}
),

recomputed as (
    select as_of from published_dates
    where as_of = {{ as_of_date() }}
    union all
    select min(as_of) from published_dates
    where as_of > {{ as_of_date() }}
),

pairs as (
    select
        r.as_of,
        (
            select max(d.as_of) from published_dates as d
            where d.as_of < r.as_of
        ) as previous_as_of
    from recomputed as r
    where r.as_of is not null
),

current_members as (
    select
        h.user_id,
        h.as_of,
        h.segment_name
    from {{ ref('user_segment_history') }} as h
    inner join pairs as p on h.as_of = p.as_of
),

previous_members as (
    select
        h.user_id,
        p.as_of,
        h.segment_name
    from {{ ref('user_segment_history') }} as h
    inner join pairs as p on h.as_of = p.previous_as_of
)

select
    coalesce(c.user_id, pm.user_id) as user_id,
    pairs.as_of,
    pairs.previous_as_of,
    coalesce(c.segment_name, pm.segment_name) as segment_name,
    case when pm.user_id is null then 'entered' else 'exited' end as event
from current_members as c
full outer join previous_members as pm
    on c.as_of = pm.as_of and c.user_id = pm.user_id and c.segment_name = pm.segment_name
inner join pairs on pairs.as_of = coalesce(c.as_of, pm.as_of)
where c.user_id is null or pm.user_id is null
