{{ config(schema=audit_schema() ~ '_intermediate') }}
{#
  User features as of var('as_of'), from data known then only: one row per canonical user, assembled from the
  building blocks (purchases, engagement, categories, channels) and the CRM profile. Formulas (column meanings:
  the doc blocks in marts/_feature_columns.md):
  - RFM over 365 days; quintile scores 1-5 among buyers (recency: 5 = most recent).
  - engagement_score (0-100, last 30 days) = 30*min(active_days/10,1) + 30*min(sessions/15,1)
      + 20*min(email_opens/8,1) + 20*min(email_clicks/4,1)
  - intent_score_30d = event intent points + var('intent_weights').cart_abandonment per abandoned session
  - lifecycle_stage: prospect (no purchase) > lapsed (>90 days) > at_risk (>45 days) > loyal (a third or later
      purchase within the last 30 days, new customers included) > new (first purchase within 30 days) > repeat
      (2+) > active.
  - buy-till-you-die signal (int_users_purchases_summarised): purchase days, customer age, gaps between purchase
      days, recency_ratio = recency_days / mean_interpurchase_days, spend per order and per repeat purchase day;
      returns, the latest order against the usual one, purchase days per observed day.
  - products (int_users_products_summarised, where the source has product ids): how widely bought and how
      recently sold the customer's products are, and how much the customer rebuys them.
  - days_since_last_interaction: the latest of the last event (where behaviour is used) and the last purchase;
      for users with neither, since the contact was created.
  Without an analytics source the engagement features are unknown (null), not zero; so they are for users without
  tracking consent, whose events are never attributed (int_identities_resolved).
#}
{% set weights = var('intent_weights') %}
{#- Behaviour is used where events are collected and the person consented to tracking. #}
{% set tracked = 'ds.has_events and p.has_tracking_consent' %}
with datasets as (
    select count(*) filter (where dataset = 'events') > 0 as has_events
    from {{ ref('stg_segflow__sources') }}
),

users as (
    select distinct user_id
    from {{ ref('int_identities_resolved') }}
    where identifier_type in ('crm_contact_id', 'transaction_customer_ref')
),

contacts as (
    select * from {{ ref('int_contacts_versioned_as_of') }}
    where contact_id = user_id
),

profile as (
    select
        u.user_id,
        c.contact_id is not null as is_crm_contact,
        {{ years_between('c.birth_date', as_of_date()) }} as age_years,
        c.gender,
        c.country_code,
        c.income_band,
        c.interest_tags,
        c.has_email_consent,
        c.has_tracking_consent,
        c.email_hash,
        c.email_sha256,
        c.created_at,
        c.crm_preferred_channel
    from users as u
    left join contacts as c on u.user_id = c.user_id
),

base as (
    select
        p.user_id,
        {{ as_of_date() }} as as_of,
        p.is_crm_contact,
        case
            when p.age_years is null or p.age_years not between 16 and 110 then 'Unknown'
            when p.age_years < 25 then '16-24'
            when p.age_years < 35 then '25-34'
            when p.age_years < 45 then '35-44'
            when p.age_years < 55 then '45-54'
            when p.age_years < 65 then '55-64'
            else '65+'
        end as age_band,
        case when p.age_years between 16 and 110 then p.age_years end as age,
        coalesce(p.gender, 'unknown') as gender,
        coalesce(p.country_code, 'Unknown') as country,
        coalesce(p.income_band, 'Unknown') as income_band,
        p.interest_tags,
        coalesce(p.has_email_consent, false) as has_email_consent,
        coalesce(p.has_tracking_consent, false) as has_tracking_consent,
        p.email_hash,
        p.email_sha256,
        {{ days_between('coalesce(cast(p.created_at as date), o.first_purchase_date)', as_of_date()) }} as tenure_days,
        o.first_purchase_date,
        o.last_purchase_date,
        {{ days_between('o.last_purchase_date', as_of_date()) }} as recency_days,
        coalesce(o.frequency_365d, 0) as frequency_365d,
        {{ round_to('coalesce(o.monetary_365d, 0)', 2) }} as monetary_365d,
        coalesce(o.lifetime_orders, 0) as lifetime_orders,
        {{ round_to('coalesce(o.lifetime_spend, 0)', 2) }} as lifetime_spend,
        coalesce(o.orders_30d, 0) as orders_30d,
        coalesce(o.orders_90d, 0) as orders_90d,
        coalesce(o.orders_180d, 0) as orders_180d,
        {{ round_to('coalesce(o.spend_90d, 0)', 2) }} as spend_90d,
        coalesce(o.purchase_days, 0) as purchase_days,
        o.customer_age_days,
        o.days_first_to_last_purchase,
        -- Means and ratios keep their precision: rounding a quotient would only move ties between engines.
        o.mean_interpurchase_days,
        o.last_interpurchase_days,
        {{ days_between('o.last_purchase_date', as_of_date()) }} / o.mean_interpurchase_days as recency_ratio,
        o.avg_order_value,
        o.avg_items_per_order,
        o.avg_lines_per_order,
        o.repeat_purchase_value,
        o.third_purchase_date,
        {{ round_to('coalesce(o.returned_value_365d, 0)', 2) }} as returned_value_365d,
        o.last_order_lines_ratio,
        o.purchase_day_rate_365d,
        pr.avg_product_buyers_90d,
        pr.avg_log_product_buyers,
        pr.products_sold_30d_share,
        pr.repeat_product_share,
        case when {{ tracked }} then coalesce(e.active_days_30d, 0) end as active_days_30d,
        case when {{ tracked }} then coalesce(e.sessions_30d, 0) end as sessions_30d,
        case when {{ tracked }} then coalesce(e.email_opens_30d, 0) end as email_opens_30d,
        case when {{ tracked }} then coalesce(e.email_clicks_30d, 0) end as email_clicks_30d,
        case when {{ tracked }} then coalesce(e.page_views_7d, 0) end as page_views_7d,
        case when {{ tracked }} then {{ days_between('e.last_activity_date', as_of_date()) }} end
            as days_since_last_activity,
        {{ days_between(
            'coalesce(greatest(case when ' ~ tracked ~ ' then e.last_activity_date end, o.last_purchase_date),'
            ~ ' case when ' ~ tracked ~ ' then e.last_activity_date end, o.last_purchase_date,'
            ~ ' cast(p.created_at as date))', as_of_date()) }} as days_since_last_interaction,
        case when {{ tracked }} then {{ round_to(
            '30 * least(coalesce(e.active_days_30d, 0) / 10.0, 1)'
            ~ ' + 30 * least(coalesce(e.sessions_30d, 0) / 15.0, 1)'
            ~ ' + 20 * least(coalesce(e.email_opens_30d, 0) / 8.0, 1)'
            ~ ' + 20 * least(coalesce(e.email_clicks_30d, 0) / 4.0, 1)', 1) }} end as engagement_score,
        case when {{ tracked }} then {{ round_to(
            'coalesce(e.event_intent_points, 0) + ' ~ weights.get('cart_abandonment', 0)
            ~ ' * coalesce(e.abandoned_sessions_30d, 0)', 1) }} end as intent_score_30d,
        case when {{ tracked }} then coalesce(e.abandoned_sessions_30d, 0) > 0 end as cart_abandoned_30d,
        case when {{ tracked }} then coalesce(t.top_category, 'none') end as top_category,
        case when {{ tracked }} then {{ round_to('coalesce(t.top_category_share, 0)', 3) }} end as top_category_share,
        t.interest_category,
        t.interest_category_views_30d,
        coalesce(ch.preferred_channel_observed, p.crm_preferred_channel, 'unknown') as preferred_channel,
        coalesce(ch.preferred_device, 'unknown') as preferred_device
    from profile as p
    cross join datasets as ds
    left join {{ ref('int_users_purchases_summarised') }} as o on p.user_id = o.user_id
    left join {{ ref('int_users_products_summarised') }} as pr on p.user_id = pr.user_id
    left join {{ ref('int_users_engagement_summarised') }} as e on p.user_id = e.user_id
    left join {{ ref('int_users_categories_ranked') }} as t on p.user_id = t.user_id
    left join {{ ref('int_users_channels_ranked') }} as ch on p.user_id = ch.user_id
),

scored as (
    select
        *,
        case when frequency_365d > 0 then ntile(5) over (
                    partition by frequency_365d > 0 order by recency_days desc, user_id asc
                )
        end as recency_score,
        case when frequency_365d > 0 then ntile(5) over (
                    partition by frequency_365d > 0 order by frequency_365d, user_id
                )
        end as frequency_score,
        case when frequency_365d > 0 then ntile(5) over (
                    partition by frequency_365d > 0 order by monetary_365d, user_id
                )
        end as monetary_score
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
        when lifetime_orders >= 3 and recency_days <= 30 then 'loyal'
        when first_purchase_date > {{ as_of_date() }} - 30 then 'new'
        when lifetime_orders >= 2 then 'repeat'
        else 'active'
    end as lifecycle_stage
from scored
