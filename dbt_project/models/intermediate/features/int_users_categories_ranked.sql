{{ config(schema=audit_schema() ~ '_intermediate') }}
-- Each user's product categories as of var('as_of'):
-- - top_category: the category of most product views, cart adds, purchases and wishlist adds over 90 days, with
--   its share of them;
-- - interest_category: the most-viewed category (more than 3 product views in 30 days) not bought in 30 days.
-- Ties break alphabetically so reruns are reproducible.
with events as (
    select * from {{ ref('int_events_attributed') }}
    where product_category is not null
),

category_activity as (
    select
        user_id,
        product_category,
        count(*) as n
    from events
    where event_date > {{ as_of_date() }} - 90
        and event_type in ('product_view', 'add_to_cart', 'purchase', 'wishlist_add')
    group by user_id, product_category
),

top_category as (
    select
        user_id,
        top_category,
        top_category_share
    from (
        select
            user_id,
            product_category as top_category,
            cast(n as float8) / sum(n) over (partition by user_id) as top_category_share,
            row_number() over (partition by user_id order by n desc, product_category asc) as category_rank
        from category_activity
    ) as ranked
    where category_rank = 1
),

category_views_30d as (
    select
        user_id,
        product_category,
        count(*) as product_views
    from events
    where event_date > {{ as_of_date() }} - 30 and event_type = 'product_view'
    group by user_id, product_category
),

bought_30d as (
    select distinct
        user_id,
        category
    from {{ ref('int_orders_attributed') }}
    where status = 'completed' and category is not null and order_date > {{ as_of_date() }} - 30
),

interest as (
    select
        user_id,
        interest_category,
        interest_category_views_30d
    from (
        select
            v.user_id,
            v.product_category as interest_category,
            v.product_views as interest_category_views_30d,
            row_number()
                over (partition by v.user_id order by v.product_views desc, v.product_category asc)
                as interest_rank
        from category_views_30d as v
        left join bought_30d as b on v.user_id = b.user_id and v.product_category = b.category
        where v.product_views > 3 and b.user_id is null
    ) as ranked
    where interest_rank = 1
)

select
    coalesce(t.user_id, i.user_id) as user_id,
    t.top_category,
    t.top_category_share,
    i.interest_category,
    i.interest_category_views_30d
from top_category as t
full outer join interest as i on t.user_id = i.user_id
