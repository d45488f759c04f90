-- Segment sizes per published as_of, and how stable the primary segments are from one as_of to the next:
-- moved_share = share of users present on both dates whose primary segment changed.
with sizes as (
    select
        as_of,
        segment_name,
        count(*) as members,
        count(*) filter (where is_primary) as primary_members
    from {{ ref('user_segment_history') }}
    group by 1, 2
),

primaries as (
    select
        user_id,
        as_of,
        segment_name,
        lag(segment_name) over (partition by user_id order by as_of) as previous_segment,
        lag(as_of) over (partition by user_id order by as_of) as previous_as_of
    from {{ ref('user_segment_history') }}
    where is_primary
),

stability as (
    select
        as_of,
        count(*) filter (where previous_as_of is not null) as users_compared,
        count(*) filter (where previous_as_of is not null and previous_segment <> segment_name) as users_moved
    from primaries
    group by 1
)

select
    s.as_of,
    s.segment_name,
    s.members,
    s.primary_members,
    st.users_compared,
    st.users_moved,
    case when st.users_compared > 0 then {{ round_to('st.users_moved * 1.0 / st.users_compared', 4) }} end
        as moved_share
from sizes as s
inner join stability as st using (as_of)
