{{ config(schema=audit_schema() ~ '_intermediate') }}
-- The product lines of the valid orders known on the as-of date (int_orders_attributed), with their product:
-- what the product features compare across customers. Sources without a product column have none.
select
    o.user_id,
    o.order_id,
    o.order_date,
    o.status,
    l.product_id
from {{ ref('int_orders_attributed') }} as o
inner join {{ ref('stg_shop__transactions') }} as l on o.order_id = l.order_id
where l.line_type = 'product'
    and l.product_id is not null
