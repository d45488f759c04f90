-- One row per order, amounts converted to the reporting currency, status normalised, defects flagged.
with source as (
    select * from {{ source('raw', 'transactions') }}
),

deduplicated as (
    select
        *,
        row_number() over (partition by order_id order by _file_date desc, _loaded_at desc) as _dup_rank
    from source
),

rates as (
    select * from {{ ref('currency_rates') }}
)

select
    d.order_id,
    trim(d.customer_ref) as customer_ref,
    -- References that look like an email are matched on a salted hash, never in clear text downstream.
    case when position('@' in d.customer_ref) > 0 then {{ pii_hash('d.customer_ref') }} end as customer_email_hash,
    d.order_ts,
    cast(d.order_ts as date) as order_date,
    d.amount as amount_local,
    upper(trim(d.currency)) as currency,
    round(d.amount / r.units_per_eur, 2) as amount_reporting,
    case lower(trim(d.status))
        when 'completed' then 'completed' when 'complete' then 'completed' when 'paid' then 'completed'
        when 'refunded' then 'refunded' when 'refund' then 'refunded'
        when 'cancelled' then 'cancelled' when 'canceled' then 'cancelled'
        else 'other'
    end as status,
    lower(nullif(trim(d.category), '')) as category,
    d.item_count,
    d._file_date as file_date,
    case
        when r.currency is null then 'unknown_currency'
        when d.amount < 0 then 'negative_amount'
        when d.order_ts >= d._file_date + interval 2 day then 'future_timestamp'
    end as invalid_reason
from deduplicated as d
left join rates as r on upper(trim(d.currency)) = r.currency
where d._dup_rank = 1
