-- Entered / exited events between consecutive published as_of dates, stored per as_of. A build writes its own
-- date and the next published date after it: backfilling a gap changes what the next date is compared with, and
-- the result must not depend on the order dates were built in. The memberships compared are the published ones,
-- with this build's date taken from what it is publishing. On the first as_of ever published every membership
-- counts as entered (previous_as_of is null).
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='append_new_columns',
    pre_hook="{{ drop_unpublished(recomputed_dates_sql()) }}"
) }}
with memberships as (
    {{ memberships_with_this_build() }}
),

published_dates as (
    select distinct as_of from memberships
),

recomputed as (
    select as_of from published_dates
    where as_of = {{ as_of_date() }}
    union all
    select min(as_of) as as_of from published_dates
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
        m.user_id,
        m.as_of,
        m.segment_name
    from memberships as m
    inner join pairs as p on m.as_of = p.as_of
),

previous_members as (
    select
        m.user_id,
        p.as_of,
        m.segment_name
    from memberships as m
    inner join pairs as p on m.as_of = p.previous_as_of
)

select
    coalesce(c.user_id, pm.user_id) as user_id,
    pairs.as_of,
    pairs.previous_as_of,
    coalesce(c.segment_name, pm.segment_name) as segment_name,
    case when pm.user_id is null then 'entered' else 'exited' end as event,
    '{{ invocation_id }}' as _publish_id
from current_members as c
full outer join previous_members as pm
    on c.as_of = pm.as_of and c.user_id = pm.user_id and c.segment_name = pm.segment_name
inner join pairs on coalesce(c.as_of, pm.as_of) = pairs.as_of
where c.user_id is null or pm.user_id is null
