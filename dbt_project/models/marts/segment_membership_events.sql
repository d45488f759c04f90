-- Entered / exited events between the previous published as_of and this one (one partition per as_of).
-- On the first as_of ever built every membership counts as entered.
{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='as_of') }}
with current_members as (
    select user_id, as_of, segment_name from {{ ref('audit_user_segments') }}
),

previous_date as (
    select max(as_of) as as_of
    from {{ ref('user_segment_history') }}
    where as_of < {{ as_of_date() }}
),

previous_members as (
    select h.user_id, h.segment_name, h.as_of
    from {{ ref('user_segment_history') }} as h
    join previous_date as p on h.as_of = p.as_of
)

select
    coalesce(c.user_id, p.user_id) as user_id,
    {{ as_of_date() }} as as_of,
    (select as_of from previous_date) as previous_as_of,
    coalesce(c.segment_name, p.segment_name) as segment_name,
    case when p.user_id is null then 'entered' else 'exited' end as event
from current_members as c
full outer join previous_members as p
    on c.user_id = p.user_id and c.segment_name = p.segment_name
where c.user_id is null or p.user_id is null
