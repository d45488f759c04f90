{{ config(schema=audit_schema() ~ '_intermediate') }}
{#
  Each tracked user's behaviour up to var('as_of'): the day of their last event (any type, ever), and over the
  30 days up to as_of active days, sessions, email opens and clicks, page views (also over 7 days), intent
  points and abandoned carts. Users without any event have no row.
  - event_intent_points = sum over events of var('intent_weights')[event_type]
  - abandoned_sessions_30d = sessions with an add_to_cart and no purchase
#}
{% set weights = var('intent_weights') %}
with last_seen as (
    select
        user_id,
        max(event_date) as last_activity_date
    from {{ ref('int_events_attributed') }}
    group by user_id
),

events_30d as (
    select * from {{ ref('int_events_attributed') }}
    where event_date > {{ as_of_date() }} - 30
),

sessions as (
    select
        user_id,
        session_id,
        bool_or(event_type = 'add_to_cart') and not bool_or(event_type = 'purchase') as is_abandoned
    from events_30d
    group by user_id, session_id
),

abandonment as (
    select
        user_id,
        count(*) filter (where is_abandoned) as abandoned_sessions_30d
    from sessions
    group by user_id
),

activity as (
    select
        user_id,
        count(distinct event_date) as active_days_30d,
        count(distinct session_id) as sessions_30d,
        count(*) filter (where event_type = 'email_open') as email_opens_30d,
        count(*) filter (where event_type = 'email_click') as email_clicks_30d,
        count(*) filter (where event_type = 'page_view') as page_views_30d,
        count(*) filter (where event_type = 'page_view' and event_date > {{ as_of_date() }} - 7) as page_views_7d,
        0 {% for event_type, weight in weights.items() if event_type != 'cart_abandonment' %}
            + {{ weight }} * count(*) filter (where event_type = '{{ event_type }}'){% endfor %} as event_intent_points
    from events_30d
    group by user_id
)

select
    s.user_id,
    s.last_activity_date,
    coalesce(a.active_days_30d, 0) as active_days_30d,
    coalesce(a.sessions_30d, 0) as sessions_30d,
    coalesce(a.email_opens_30d, 0) as email_opens_30d,
    coalesce(a.email_clicks_30d, 0) as email_clicks_30d,
    coalesce(a.page_views_30d, 0) as page_views_30d,
    coalesce(a.page_views_7d, 0) as page_views_7d,
    {{ as_double('coalesce(a.event_intent_points, 0)') }} as event_intent_points,
    coalesce(ab.abandoned_sessions_30d, 0) as abandoned_sessions_30d
from last_seen as s
left join activity as a on s.user_id = a.user_id
left join abandonment as ab on s.user_id = ab.user_id
