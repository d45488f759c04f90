-- Segment sizes per published as_of, and how stable the primary segments are between consecutive published
-- dates: moved_share = share of users present on both dates whose primary segment changed. Stored per as_of; a
-- build writes its own date and the next published date after it (see store_segment_membership_events).
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

sizes as (
    select
        m.as_of,
        m.segment_name,
        count(*) as members,
        count(*) filter (where m.is_primary) as primary_members
    from memberships as m
    inner join pairs as p on m.as_of = p.as_of
    group by m.as_of, m.segment_name
),

primary_changes as (
    select
        p.as_of,
        cur.user_id,
        cur.segment_name <> prev.segment_name as has_moved
    from pairs as p
    inner join memberships as cur on p.as_of = cur.as_of and cur.is_primary
    inner join memberships as prev on p.previous_as_of = prev.as_of and cur.user_id = prev.user_id and prev.is_primary
),

stability as (
    select
        p.as_of,
        count(c.user_id) as users_compared,
        count(c.user_id) filter (where c.has_moved) as users_moved
    from pairs as p
    left join primary_changes as c on p.as_of = c.as_of
    group by p.as_of
)

select
    s.as_of,
    s.segment_name,
    s.members,
    s.primary_members,
    st.users_compared,
    st.users_moved,
    case when st.users_compared > 0 then {{ round_to('st.users_moved * 1.0 / st.users_compared', 4) }} end
        as moved_share,
    '{{ invocation_id }}' as _publish_id
from sizes as s
inner join stability as st on s.as_of = st.as_of
