{{ config(schema=audit_schema() ~ '_intermediate') }}
-- Each contact as it was on the as-of date: its latest version written by then.
-- Contacts sharing a normalised email are one person: the oldest contact is canonical (user_id).
-- Consent belongs to the person: the latest decision of any of their contacts wins, and decisions made at the
-- same moment that disagree mean no consent.
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
    select
        *,
        coalesce(
            case when email_hash is not null
                    then first_value(contact_id) over (partition by email_hash order by created_at asc, contact_id asc)
            end,
            contact_id
        ) as user_id
    from ranked
    where version_rank = 1
),

decisions as (
    select
        *,
        max(updated_at) over (partition by user_id) as latest_decision_at
    from latest
)

-- Windows rather than a join to a per-person aggregate: PostgreSQL estimates one row for each side and nests loops.
select
    contact_id,
    user_id,
    created_at,
    email_hash,
    email_sha256,
    birth_date,
    gender,
    country_code,
    income_band,
    interest_tags,
    bool_and(case when updated_at = latest_decision_at then has_email_consent end)
        over (partition by user_id) as has_email_consent,
    bool_and(case when updated_at = latest_decision_at then has_tracking_consent end)
        over (partition by user_id) as has_tracking_consent,
    crm_preferred_channel
from decisions
