{{ config(schema=audit_schema() ~ '_intermediate') }}
-- Valid orders known on the as-of date, attributed to their canonical user.
select
    l.user_id,
    o.order_id,
    o.order_ts,
    o.order_date,
    o.amount_reporting,
    o.status,
    o.category,
    o.item_count,
    o.line_count
from {{ ref('int_orders_aggregated') }} as o
inner join {{ ref('int_identities_resolved') }} as l
    on l.identifier_type = 'transaction_customer_ref'
        and l.identifier = coalesce(o.customer_email_hash, o.customer_ref)
where o.order_ts < {{ as_of_end() }}
    and o.file_date <= {{ as_of_date() }}
    and o.invalid_reason is null
