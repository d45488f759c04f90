{{ config(schema=audit_schema() ~ '_intermediate') }}
-- Each user's most frequent channel and device over the 90 days up to var('as_of'); ties break alphabetically
-- so reruns are reproducible.
with events_90d as (
    select * from {{ ref('int_events_attributed') }}
    where event_date > {{ as_of_date() }} - 90
),

channels as (
    select
        user_id,
        channel,
        row_number() over (partition by user_id order by n desc, channel asc) as channel_rank
    from (
        select
            user_id,
            channel,
            count(*) as n
        from events_90d
        where channel is not null
        group by user_id, channel
    ) as counted
),

devices as (
    select
        user_id,
        device,
        row_number() over (partition by user_id order by n desc, device asc) as device_rank
    from (
        select
            user_id,
            device,
            count(*) as n
        from events_90d
        where device is not null
        group by user_id, device
    ) as counted
),

top_channel as (
    select
        user_id,
        channel
    from channels
    where channel_rank = 1
),

top_device as (
    select
        user_id,
        device
    from devices
    where device_rank = 1
)

select
    coalesce(c.user_id, d.user_id) as user_id,
    c.channel as preferred_channel_observed,
    d.device as preferred_device
from top_channel as c
full outer join top_device as d
    on c.user_id = d.user_id
