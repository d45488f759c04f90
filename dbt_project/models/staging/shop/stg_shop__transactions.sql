-- One row per order line (a whole order when the source has no line ids): typed, converted to the
-- reporting currency, status and line type normalised, re-delivered lines resolved to the latest load,
-- defects flagged (not dropped) so their effect stays visible.
with source as (
    select * from {{ source('raw', 'transactions') }}
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by order_id, coalesce(line_id, '')
            order by _file_date desc nulls last, _loaded_at desc
        ) as _dup_rank
    from source
),

rates as (
    select * from {{ ref('currency_rates') }}
),

-- The reporting currency (var, from segflow.yml features.reporting_currency) in units per EUR.
reporting as (
    select units_per_eur from rates where currency = upper('{{ var("reporting_currency") }}')
),

typed as (
    select
        d.order_id,
        d.line_id,
        trim(d.customer_ref) as customer_ref,
        d.order_ts,
        cast(d.order_ts as date) as order_date,
        d.amount as amount_local,
        upper(trim(d.currency)) as currency,
        {{ round_to('d.amount / r.units_per_eur * rep.units_per_eur', 2) }} as amount_reporting,
        r.currency is not null as is_known_currency,
        case lower(trim(d.status))
            when 'completed' then 'completed' when 'complete' then 'completed' when 'paid' then 'completed'
            when 'refunded' then 'refunded' when 'refund' then 'refunded'
            when 'cancelled' then 'cancelled' when 'canceled' then 'cancelled'
            when 'pending' then 'pending'
            else 'other'
        end as status,
        case lower(trim(coalesce(d.line_type, 'product')))
            when 'product' then 'product' when 'fee' then 'fee' when 'discount' then 'discount'
            else 'adjustment'
        end as line_type,
        lower(nullif(trim(d.category), '')) as category,
        d.item_count,
        -- Rows of dated files are known from their file's date; rows of undated snapshot exports from their own date.
        coalesce(d._file_date, cast(d.order_ts as date)) as file_date,
        case
            when d._file_date is not null then d.order_ts >= d._file_date + interval '2 day'
            else d.order_ts >= d._loaded_at + interval '1 day'
        end as is_future_timestamp
    from deduplicated as d
    left join rates as r on upper(trim(d.currency)) = r.currency
    cross join reporting as rep
    where d._dup_rank = 1
)

select
    *,
    -- References that look like an email are matched on a salted hash, never in clear text downstream.
    case when position('@' in customer_ref) > 0 then {{ pii_hash('customer_ref') }} end as customer_email_hash,
    case
        when not is_known_currency then 'unknown_currency'
        when amount_local < 0 and status = 'completed' and line_type = 'product' then 'negative_amount'
        when is_future_timestamp then 'future_timestamp'
    end as invalid_reason
from typed
