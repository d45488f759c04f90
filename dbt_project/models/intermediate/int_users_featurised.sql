{#
  User features as of var('as_of'), from data known then only. Formulas (documented in the marts yml):
  - RFM over 365 days; quintile scores 1-5 among buyers (recency: 5 = most recent).
  - engagement_score (0-100, last 30 days) = 30*min(active_days/10,1) + 30*min(sessions/15,1)
      + 20*min(email_opens/8,1) + 20*min(email_clicks/4,1)
  - intent_score_30d = sum of var('intent_weights') per event + cart_abandonment weight per abandoned session
  - lifecycle_stage: prospect (no purchase) > lapsed (>90 days) > at_risk (>45 days) > new (first purchase
      within 30 days) > loyal (3+ purchases, last within 30 days) > repeat (2+) > active.
#}
{#- A view (not ephemeral) so its formulas can be unit-tested; built per audit schema, so training builds for
    past dates never replace the daily build's view. -#}
{{ config(materialized='view', schema='audit_intermediate') }}
{% set weights = var('intent_weights') %}
{% set engagement_formula %}
    30 * least(coalesce(e.active_days_30d, 0) / 10.0, 1)
    + 30 * least(coalesce(e.sessions_30d, 0) / 15.0, 1)
    + 20 * least(coalesce(e.email_opens_30d, 0) / 8.0, 1)
    + 20 * least(coalesce(e.email_clicks_30d, 0) / 4.0, 1)
{% endset %}
{% set intent_formula %}
    coalesce(e.event_intent_points, 0) + {{ weights.get('cart_abandonment', 0) }} * coalesce(a.abandoned_sessions_30d, 0)
{% endset %}
with datasets as (
    -- Without an analytics source, engagement features are unknown (null), not zero.
    select count(*) filter (where dataset = 'events') > 0 as has_events
    from {{ source('raw', 'sources') }}
),

users as (
    select distinct user_id from {{ ref('int_identities_resolved') }}
    where identifier_type in ('crm_contact_id', 'transaction_customer_ref')
),

contacts as (
    select * from {{ ref('int_contacts_versioned_as_of') }} where contact_id = user_id
),

orders as (
    select * from {{ ref('int_orders_attributed') }} where status = 'completed'
),

events as (
    select * from {{ ref('int_events_attributed') }}
),

order_stats as (
    select
        user_id,
        max(order_date) as last_purchase_date,
        min(order_date) as first_purchase_date,
        count(*) as lifetime_orders,
        sum(amount_reporting) as lifetime_spend,
        count(*) filter (where order_date > {{ as_of_date() }} - 365) as frequency_365d,
        coalesce(sum(amount_reporting) filter (where order_date > {{ as_of_date() }} - 365), 0) as monetary_365d,
        count(*) filter (where order_date > {{ as_of_date() }} - 30) as orders_30d,
        count(*) filter (where order_date > {{ as_of_date() }} - 90) as orders_90d
    from orders
    group by 1
),

events_30d as (
    select * from events where event_date > {{ as_of_date() }} - 30
),

session_flags as (
    select
        user_id,
        session_id,
        bool_or(event_type = 'add_to_cart') and not bool_or(event_type = 'purchase') as is_abandoned
    from events_30d
    group by 1, 2
),

engagement as (
    select
        user_id,
        count(distinct event_date) as active_days_30d,
        count(distinct session_id) as sessions_30d,
        count(*) filter (where event_type = 'email_open') as email_opens_30d,
        count(*) filter (where event_type = 'email_click') as email_clicks_30d,
        count(*) filter (where event_type = 'page_view') as page_views_30d,
        0 {% for event_type, weight in weights.items() if event_type != 'cart_abandonment' %}
            + {{ weight }} * count(*) filter (where event_type = '{{ event_type }}'){% endfor %} as event_intent_points
    from events_30d
    group by 1
),

abandonment as (
    select user_id, count(*) filter (where is_abandoned) as abandoned_sessions_30d
    from session_flags
    group by 1
),

category_activity as (
    select user_id, product_category, count(*) as n
    from events
    where event_date > {{ as_of_date() }} - 90
      and product_category is not null
      and event_type in ('product_view', 'add_to_cart', 'purchase', 'wishlist_add')
    group by 1, 2
),

top_category as (
    select user_id, top_category, top_category_share
    from (
        select
            user_id,
            product_category as top_category,
            n * 1.0 / sum(n) over (partition by user_id) as top_category_share,
            row_number() over (partition by user_id order by n desc, product_category) as category_rank
        from category_activity
    ) as ranked
    where category_rank = 1
),

category_views_30d as (
    select e.user_id, e.product_category, count(*) as views
    from events_30d as e
    where e.event_type = 'product_view' and e.product_category is not null
    group by 1, 2
),

interest as (
    -- Most-viewed category (more than 3 views in 30 days) with no purchase in it over 30 days.
    select user_id, interest_category, interest_category_views_30d
    from (
        select
            v.user_id,
            v.product_category as interest_category,
            v.views as interest_category_views_30d,
            row_number() over (partition by v.user_id order by v.views desc, v.product_category) as interest_rank
        from category_views_30d as v
        where v.views > 3
          and not exists (
              select 1 from orders as o
              where o.user_id = v.user_id and o.category = v.product_category and o.order_date > {{ as_of_date() }} - 30
          )
    ) as ranked
    where interest_rank = 1
),

-- Most frequent channel / device over 90 days; ties broken alphabetically so reruns are reproducible.
channel_counts as (
    select user_id, channel, count(*) as n
    from events
    where event_date > {{ as_of_date() }} - 90 and channel is not null
    group by 1, 2
),

device_counts as (
    select user_id, device, count(*) as n
    from events
    where event_date > {{ as_of_date() }} - 90 and device is not null
    group by 1, 2
),

preferred as (
    select coalesce(c.user_id, d.user_id) as user_id, c.channel as preferred_channel_observed, d.device as preferred_device
    from (
        select user_id, channel from (
            select *, row_number() over (partition by user_id order by n desc, channel) as channel_rank from channel_counts
        ) as ranked where channel_rank = 1
    ) as c
    full outer join (
        select user_id, device from (
            select *, row_number() over (partition by user_id order by n desc, device) as device_rank from device_counts
        ) as ranked where device_rank = 1
    ) as d
        on c.user_id = d.user_id
),

base as (
    select
        u.user_id,
        {{ as_of_date() }} as as_of,
        c.contact_id is not null as is_crm_contact,
        case
            when c.birth_date is null then 'Unknown'
            when {{ years_between('c.birth_date', as_of_date()) }} not between 16 and 110 then 'Unknown'
            when {{ years_between('c.birth_date', as_of_date()) }} < 25 then '16-24'
            when {{ years_between('c.birth_date', as_of_date()) }} < 35 then '25-34'
            when {{ years_between('c.birth_date', as_of_date()) }} < 45 then '35-44'
            when {{ years_between('c.birth_date', as_of_date()) }} < 55 then '45-54'
            when {{ years_between('c.birth_date', as_of_date()) }} < 65 then '55-64'
            else '65+'
        end as age_band,
        case when {{ years_between('c.birth_date', as_of_date()) }} between 16 and 110
            then {{ years_between('c.birth_date', as_of_date()) }} end as age,
        coalesce(c.gender, 'unknown') as gender,
        coalesce(c.country_code, 'Unknown') as country,
        coalesce(c.income_band, 'Unknown') as income_band,
        coalesce(c.has_email_consent, false) as has_email_consent,
        coalesce(c.has_tracking_consent, false) as has_tracking_consent,
        c.email_hash,
        c.email_sha256,
        {{ days_between('coalesce(cast(c.created_at as date), o.first_purchase_date)', as_of_date()) }} as tenure_days,
        o.first_purchase_date,
        o.last_purchase_date,
        {{ days_between('o.last_purchase_date', as_of_date()) }} as recency_days,
        coalesce(o.frequency_365d, 0) as frequency_365d,
        {{ round_to('coalesce(o.monetary_365d, 0)', 2) }} as monetary_365d,
        coalesce(o.lifetime_orders, 0) as lifetime_orders,
        {{ round_to('coalesce(o.lifetime_spend, 0)', 2) }} as lifetime_spend,
        coalesce(o.orders_30d, 0) as orders_30d,
        coalesce(o.orders_90d, 0) as orders_90d,
        case when ds.has_events then coalesce(e.active_days_30d, 0) end as active_days_30d,
        case when ds.has_events then coalesce(e.sessions_30d, 0) end as sessions_30d,
        case when ds.has_events then coalesce(e.email_opens_30d, 0) end as email_opens_30d,
        case when ds.has_events then coalesce(e.email_clicks_30d, 0) end as email_clicks_30d,
        case when ds.has_events then {{ round_to(engagement_formula, 1) }} end as engagement_score,
        case when ds.has_events then {{ round_to(intent_formula, 1) }} end as intent_score_30d,
        case when ds.has_events then coalesce(a.abandoned_sessions_30d, 0) > 0 end as cart_abandoned_30d,
        case when ds.has_events then coalesce(t.top_category, 'none') end as top_category,
        case when ds.has_events then {{ round_to('coalesce(t.top_category_share, 0)', 3) }} end as top_category_share,
        i.interest_category,
        i.interest_category_views_30d,
        coalesce(p.preferred_channel_observed, c.crm_preferred_channel, 'unknown') as preferred_channel,
        coalesce(p.preferred_device, 'unknown') as preferred_device
    from users as u
    cross join datasets as ds
    left join contacts as c on u.user_id = c.user_id
    left join order_stats as o on u.user_id = o.user_id
    left join engagement as e on u.user_id = e.user_id
    left join abandonment as a on u.user_id = a.user_id
    left join top_category as t on u.user_id = t.user_id
    left join interest as i on u.user_id = i.user_id
    left join preferred as p on u.user_id = p.user_id
),

scored as (
    select
        *,
        case when frequency_365d > 0 then ntile(5) over (
            partition by frequency_365d > 0 order by recency_days desc, user_id) end as recency_score,
        case when frequency_365d > 0 then ntile(5) over (
            partition by frequency_365d > 0 order by frequency_365d, user_id) end as frequency_score,
        case when frequency_365d > 0 then ntile(5) over (
            partition by frequency_365d > 0 order by monetary_365d, user_id) end as monetary_score
    from base
)

select
    *,
    case
        when recency_score is null then 'No recent purchases'
        when recency_score >= 4 and frequency_score >= 4 then 'Champions'
        when recency_score >= 4 and frequency_score = 1 then 'Recent First-Timers'
        when recency_score >= 3 and frequency_score >= 3 then 'Loyal'
        when recency_score >= 4 then 'Potential Loyalists'
        when recency_score <= 2 and frequency_score >= 4 then 'Cannot Lose Them'
        when recency_score <= 2 and frequency_score >= 2 then 'At Risk'
        when recency_score <= 2 then 'Hibernating'
        else 'Needs Attention'
    end as rfm_label,
    case
        when lifetime_orders = 0 then 'prospect'
        when recency_days > 90 then 'lapsed'
        when recency_days > 45 then 'at_risk'
        when first_purchase_date > {{ as_of_date() }} - 30 then 'new'
        when lifetime_orders >= 3 and recency_days <= 30 then 'loyal'
        when lifetime_orders >= 2 then 'repeat'
        else 'active'
    end as lifecycle_stage
from scored
