-- Each buyer's completed purchases as of var('as_of'): first and last purchase, lifetime totals, and the
-- frequency and monetary value over 365 / 90 / 30 days (amounts in the reporting currency).
with orders as (
    select * from {{ ref('int_orders_attributed') }}
    where status = 'completed'
)

select
    user_id,
    min(order_date) as first_purchase_date,
    max(order_date) as last_purchase_date,
    count(*) as lifetime_orders,
    sum(amount_reporting) as lifetime_spend,
    count(*) filter (where order_date > {{ as_of_date() }} - 365) as frequency_365d,
    coalesce(sum(amount_reporting) filter (where order_date > {{ as_of_date() }} - 365), 0) as monetary_365d,
    count(*) filter (where order_date > {{ as_of_date() }} - 90) as orders_90d,
    count(*) filter (where order_date > {{ as_of_date() }} - 30) as orders_30d
from orders
group by user_id
