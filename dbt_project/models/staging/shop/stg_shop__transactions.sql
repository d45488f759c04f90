-- One row per order line (order_id, line_id), the latest delivery of each (dated files before snapshot exports),
-- converted to the reporting currency; defects flagged (not dropped) so their effect stays visible.
with lines as (
    {{ latest_version(ref('base_shop__transactions'), "order_id, coalesce(line_id, '')",
                      'is_from_dated_file desc, file_date desc, loaded_at desc') }}
),

rates as (
    select * from {{ ref('currency_rates') }}
),

-- The reporting currency (var, from segflow.yml features.reporting_currency) in units per EUR.
reporting as (
    select units_per_eur from rates
    where currency = upper('{{ var("reporting_currency") }}')
),

converted as (
    select
        l.order_id,
        l.line_id,
        l.customer_ref,
        l.customer_email_hash,
        l.order_ts,
        l.order_date,
        l.amount_local,
        l.currency,
        {{ round_to('l.amount_local / r.units_per_eur * rep.units_per_eur', 2) }} as amount_reporting,
        r.currency is not null as is_known_currency,
        l.status,
        l.line_type,
        l.category,
        l.product_id,
        l.item_count,
        l.file_date,
        l.is_future_timestamp
    from lines as l
    left join rates as r on l.currency = r.currency
    cross join reporting as rep
)

select
    *,
    case
        when not is_known_currency then 'unknown_currency'
        when amount_local < 0 and status = 'completed' and line_type = 'product' then 'negative_amount'
        when is_future_timestamp then 'future_timestamp'
        -- A finite but absurd amount (1e300 parses): no sale is worth a trillion, and features sum money exactly.
        when abs(amount_reporting) >= 1e12 then 'implausible_amount'
    end as invalid_reason
from converted
