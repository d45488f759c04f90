-- Every loaded CRM contact row, typed and normalised, PII hashed alongside (clear text stays in staging).
-- Re-delivered versions are included; stg_crm__contacts keeps the latest load of each version.
with source as (
    select * from {{ source('raw', 'crm_contacts') }}
),

renamed as (
    select
        contact_id,
        created_at,
        updated_at,
        lower(trim(email)) as email,
        {{ regex_matches('lower(trim(email))', '^[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}$') }} as is_email_valid,
        trim(phone) as phone,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        birth_date,
        lower(nullif(trim(gender), '')) as gender,
        upper(nullif(trim(country), '')) as country_code,
        nullif(trim(city), '') as city,
        nullif(trim(income_band), '') as income_band,
        coalesce(consent_email_marketing, false) as has_email_consent,
        coalesce(consent_tracking, false) as has_tracking_consent,
        lower(nullif(trim(preferred_channel), '')) as crm_preferred_channel,
        nullif(trim(interests), '') as interests,
        {{ normalised_tags('interests') }} as interest_tags,
        email_hash as loaded_email_hash,
        phone_hash,
        _loaded_at as loaded_at
    from source
)

-- The salted hashes were computed at load (the salt never appears in SQL: segflow/privacy/salt.py).
select
    contact_id,
    created_at,
    updated_at,
    email,
    is_email_valid,
    phone,
    first_name,
    last_name,
    birth_date,
    gender,
    country_code,
    city,
    income_band,
    has_email_consent,
    has_tracking_consent,
    crm_preferred_channel,
    interests,
    interest_tags,
    loaded_at,
    case when is_email_valid then loaded_email_hash end as email_hash,
    -- Unsalted SHA-256 of the normalised email: the matching key ad platforms expect in activation files.
    case when is_email_valid then {{ sha256_hex('email') }} end as email_sha256,
    case when phone is not null then phone_hash end as phone_hash
from renamed
