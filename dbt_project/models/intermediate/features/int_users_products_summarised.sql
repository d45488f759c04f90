{{ config(schema=audit_schema() ~ '_intermediate') }}
{#
  What each buyer's products say as of var('as_of'), from completed orders' product lines with a product id: how
  widely bought the customer's products are (the customers who bought each in the last 90 days; the log of those
  who ever did), the share of them anyone still bought in the last 30 days, and how much the customer buys the
  same products again. A product on several lines of one order is bought once in that order. Buyers whose
  source has no product column have no row.
#}
with purchases as (
    select distinct
        user_id,
        order_id,
        order_date,
        product_id
    from {{ ref('int_order_lines_attributed') }}
    where status = 'completed'
),

products as (
    select
        product_id,
        count(distinct user_id) as buyers,
        count(distinct case when order_date > {{ as_of_date() }} - 90 then user_id end) as buyers_90d,
        max(order_date) > {{ as_of_date() }} - 30 as is_sold_30d
    from purchases
    group by product_id
),

user_products as (
    select
        user_id,
        product_id,
        count(*) as times_bought
    from purchases
    group by user_id, product_id
)

select
    up.user_id,
    avg({{ as_double('p.buyers_90d') }}) as avg_product_buyers_90d,
    avg(ln(1 + p.buyers)) as avg_log_product_buyers,
    avg({{ as_double('case when p.is_sold_30d then 1 else 0 end') }}) as products_sold_30d_share,
    1 - {{ as_double('count(*)') }} / sum(up.times_bought) as repeat_product_share
from user_products as up
inner join products as p on up.product_id = p.product_id
group by up.user_id
