-- Every loaded order line (a whole order when the source has no line ids), typed and normalised: status and line
-- type mapped onto the canonical values, timestamps checked against their delivery. Lines delivered again are
-- included; stg_shop__transactions keeps the latest delivery of each.
select
    order_id,
    line_id,
    trim(customer_ref) as customer_ref,
    -- Salted at load when the reference is an email (segflow/core/privacy.py).
    customer_ref_hash as customer_email_hash,
    order_ts,
    cast(order_ts as date) as order_date,
    amount as amount_local,
    upper(trim(currency)) as currency,
    case lower(trim(status))
        when 'completed' then 'completed' when 'complete' then 'completed' when 'paid' then 'completed'
        when 'refunded' then 'refunded' when 'refund' then 'refunded'
        when 'cancelled' then 'cancelled' when 'canceled' then 'cancelled'
        when 'pending' then 'pending'
        else 'other'
    end as status,
    case lower(trim(coalesce(line_type, 'product')))
        when 'product' then 'product' when 'fee' then 'fee' when 'discount' then 'discount'
        else 'adjustment'
    end as line_type,
    lower(nullif(trim(category), '')) as category,
    nullif(trim(product_id), '') as product_id,
    item_count,
    -- Rows of dated files are known from their file's date; rows of undated snapshot exports from their own date.
    coalesce(_file_date, cast(order_ts as date)) as file_date,
    _file_date is not null as is_from_dated_file,
    case
        when _file_date is not null then order_ts >= _file_date + interval '2 day'
        else order_ts >= _loaded_at + interval '1 day'
    end as is_future_timestamp,
    _loaded_at as loaded_at
from {{ source('raw', 'transactions') }}
