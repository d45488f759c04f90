{{ config(schema=audit_schema() ~ '_intermediate') }}
-- Events known on the as-of date, attributed to their canonical user; pre-login events count for the
-- user their anonymous id is stitched to.
select
    coalesce(by_user.user_id, by_anon.user_id) as user_id,
    e.event_id,
    e.session_id,
    e.event_ts,
    e.event_date,
    e.event_type,
    e.product_category,
    e.device,
    e.channel
from {{ ref('stg_analytics__events') }} as e
left join {{ ref('int_identities_resolved') }} as by_user
    on by_user.identifier_type = 'analytics_user_id' and e.analytics_user_id = by_user.identifier
left join {{ ref('int_identities_resolved') }} as by_anon
    on by_anon.identifier_type = 'anonymous_id' and e.anonymous_id = by_anon.identifier
where e.event_ts < {{ as_of_end() }}
    and e.file_date <= {{ as_of_date() }}
    and not e.is_future_timestamp
    and coalesce(by_user.user_id, by_anon.user_id) is not null
