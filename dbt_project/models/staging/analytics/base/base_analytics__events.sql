-- Every raw analytics event typed and renamed, one row per loaded row (re-sent duplicates included).
-- stg_analytics__events keeps the latest version of each event.
select
    event_id,
    anonymous_id,
    nullif(trim(user_id), '') as analytics_user_id,
    session_id,
    event_ts,
    cast(event_ts as date) as event_date,
    lower(trim(event_type)) as event_type,
    lower(nullif(trim(product_category), '')) as product_category,
    lower(nullif(trim(device), '')) as device,
    lower(nullif(trim(channel), '')) as channel,
    nullif(trim(utm_source), '') as utm_source,
    -- Events of dated files are known from their file's date; of undated snapshot exports from their own date.
    coalesce(_file_date, cast(event_ts as date)) as file_date,
    -- An event stamped after the end of the day its file was delivered for (or after it was loaded) cannot be trusted.
    case
        when _file_date is not null then event_ts >= _file_date + interval '2 day'
        else event_ts >= _loaded_at + interval '1 day'
    end as is_future_timestamp,
    _loaded_at as loaded_at
from {{ source('raw', 'events') }}
