{{ config(schema=audit_schema() ~ '_intermediate') }}
-- One row per order from its lines. Amount = product and discount lines (what was paid for goods; fees
-- such as postage and manual adjustments are not spend); category = that of the largest product line.
-- An order is invalid when any line is, or when it has no product line (a pure fee or adjustment).
with lines as (
    select * from {{ ref('stg_shop__transactions') }}
),

largest_product_line as (
    select
        order_id,
        category
    from (
        select
            order_id,
            category,
            row_number() over (partition by order_id order by abs(amount_local) desc, category) as line_rank
        from lines
        where line_type = 'product' and category is not null
    ) as ranked
    where line_rank = 1
)

select
    l.order_id,
    min(l.customer_ref) as customer_ref,
    min(l.customer_email_hash) as customer_email_hash,
    min(l.order_ts) as order_ts,
    min(l.order_date) as order_date,
    -- Lines of one order normally share a status; a mix resolves to the most final one.
    case
        when bool_or(l.status = 'refunded') then 'refunded'
        when bool_or(l.status = 'cancelled') then 'cancelled'
        when bool_or(l.status = 'completed') then 'completed'
        when bool_or(l.status = 'pending') then 'pending'
        else 'other'
    end as status,
    {{ round_to("coalesce(sum(l.amount_reporting) filter (where l.line_type in ('product', 'discount')), 0)", 2) }}
        as amount_reporting,
    coalesce(sum(l.item_count) filter (where l.line_type = 'product'), 0) as item_count,
    min(c.category) as category,
    count(*) as line_count,
    -- The order is known once all of its lines are.
    max(l.file_date) as file_date,
    coalesce(
        min(l.invalid_reason),
        case when not bool_or(l.line_type = 'product') then 'no_product_lines' end
    ) as invalid_reason
from lines as l
left join largest_product_line as c on l.order_id = c.order_id
group by l.order_id
