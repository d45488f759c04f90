-- Each contact as it was on the as-of date: its latest version written by then.
-- Contacts sharing a normalised email are one person: the oldest contact is canonical.
with versions as (
    select *
    from {{ ref('stg_crm__contacts') }}
    where created_at < {{ as_of_end() }}
        and updated_at < {{ as_of_end() }}
),

ranked as (
    select
        *,
        row_number() over (partition by contact_id order by updated_at desc) as version_rank
    from versions
),

latest as (
    select * from ranked
    where version_rank = 1
)

select
    contact_id,
    coalesce(
        case when email_hash is not null
                then first_value(contact_id) over (partition by email_hash order by created_at, contact_id)
        end,
        contact_id
    ) as user_id,
    created_at,
    email_hash,
    email_sha256,
    birth_date,
    gender,
    country_code,
    income_band,
    has_email_consent,
    has_tracking_consent,
    crm_preferred_channel
from latest
