{{ config(schema=audit_schema() ~ '_intermediate') }}
{#
  Each buyer's completed purchases as of var('as_of'): first and last purchase, lifetime totals, frequency and
  monetary value over 365 / 180 / 90 / 30 days (amounts in the reporting currency), and the buy-till-you-die
  signal: purchase days, the customer's age since the first purchase, the gaps between purchase days, the spend
  of repeat purchase days (the inputs of BG/NBD and Gamma-Gamma, segflow.ml.clv) and the date of the third order.
  A purchase day is a day with at least one completed order (several orders on one day are one transaction).
  Also: the value of cancelled and refunded orders over 365 days, the lines of the latest order against the
  customer's usual, and purchase days per day of the last 365 that the data covers (a customer first seen in
  data that starts 100 days back has had 100 days to buy, not 365).
#}
-- Money is summed as exact decimals: a sum of doubles depends on the order rows arrive in (DuckDB aggregates in
-- parallel), and the same data gave spends a few 1e-14 apart between runs - enough for a tree model to split
-- differently and a rerun to publish other scores.
with attributed as (
    select
        *,
        cast(amount_reporting as decimal(38, 2)) as amount_exact
    from {{ ref('int_orders_attributed') }}
),

orders as (
    select * from attributed
    where status = 'completed'
),

returns as (
    select
        user_id,
        {{ as_double('sum(abs(amount_exact))') }} as returned_value_365d
    from attributed
    where status in ('cancelled', 'refunded')
        and order_date > {{ as_of_date() }} - 365
    group by user_id
),

-- The first order date of the data known on the as-of date (any customer, any status).
history as (
    select min(order_date) as first_order_date
    from attributed
),

latest_orders as (
    select
        user_id,
        line_count as last_order_lines
    from (
        select
            user_id,
            line_count,
            row_number() over (partition by user_id order by order_ts desc, order_id desc) as recency_rank
        from orders
    ) as ranked
    where recency_rank = 1
),

numbered_orders as (
    select
        user_id,
        order_date,
        row_number() over (partition by user_id order by order_ts, order_id) as order_number
    from orders
),

purchase_days as (
    select
        user_id,
        order_date,
        sum(amount_exact) as day_spend,
        row_number() over (partition by user_id order by order_date) as day_number,
        count(*) over (partition by user_id) as days_total,
        lag(order_date) over (partition by user_id order by order_date) as previous_date
    from orders
    group by user_id, order_date
),

rhythm as (
    select
        user_id,
        count(*) as purchase_days,
        count(*) filter (where order_date > {{ as_of_date() }} - 365) as purchase_days_365d,
        max({{ days_between('previous_date', 'order_date') }}) filter (
            where day_number = days_total and day_number > 1
        ) as last_interpurchase_days,
        {{ as_double('avg(day_spend) filter (where day_number > 1)') }} as repeat_purchase_value
    from purchase_days
    group by user_id
),

third_orders as (
    select
        user_id,
        order_date as third_purchase_date
    from numbered_orders
    where order_number = 3
),

totals as (
    select
        user_id,
        min(order_date) as first_purchase_date,
        max(order_date) as last_purchase_date,
        count(*) as lifetime_orders,
        {{ as_double('sum(amount_exact)') }} as lifetime_spend,
        count(*) filter (where order_date > {{ as_of_date() }} - 365) as frequency_365d,
        coalesce({{ as_double('sum(amount_exact) filter (where order_date > ' ~ as_of_date() ~ ' - 365)') }}, 0)
            as monetary_365d,
        count(*) filter (where order_date > {{ as_of_date() }} - 180) as orders_180d,
        count(*) filter (where order_date > {{ as_of_date() }} - 90) as orders_90d,
        coalesce({{ as_double('sum(amount_exact) filter (where order_date > ' ~ as_of_date() ~ ' - 90)') }}, 0)
            as spend_90d,
        count(*) filter (where order_date > {{ as_of_date() }} - 30) as orders_30d,
        avg(item_count) as avg_items_per_order,
        avg(line_count) as avg_lines_per_order
    from orders
    group by user_id
)

select
    t.user_id,
    t.first_purchase_date,
    t.last_purchase_date,
    t.lifetime_orders,
    t.lifetime_spend,
    t.frequency_365d,
    t.monetary_365d,
    t.orders_180d,
    t.orders_90d,
    t.spend_90d,
    t.orders_30d,
    r.purchase_days,
    {{ days_between('t.first_purchase_date', as_of_date()) }} as customer_age_days,
    {{ days_between('t.first_purchase_date', 't.last_purchase_date') }} as days_first_to_last_purchase,
    case when r.purchase_days > 1 then
            {{ as_double(days_between('t.first_purchase_date', 't.last_purchase_date')) }} / (r.purchase_days - 1)
    end as mean_interpurchase_days,
    r.last_interpurchase_days,
    t.lifetime_spend / t.lifetime_orders as avg_order_value,
    t.avg_items_per_order,
    t.avg_lines_per_order,
    r.repeat_purchase_value,
    th.third_purchase_date,
    coalesce(rt.returned_value_365d, 0) as returned_value_365d,
    {{ as_double('lo.last_order_lines') }} / t.avg_lines_per_order as last_order_lines_ratio,
    {{ as_double('r.purchase_days_365d') }} / least(
        365, {{ days_between('h.first_order_date', as_of_date()) }} + 1
    ) as purchase_day_rate_365d
from totals as t
inner join rhythm as r on t.user_id = r.user_id
inner join latest_orders as lo on t.user_id = lo.user_id
cross join history as h
left join third_orders as th on t.user_id = th.user_id
left join returns as rt on t.user_id = rt.user_id
