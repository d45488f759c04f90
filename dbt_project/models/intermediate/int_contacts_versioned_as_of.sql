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
        user_id,
        updated_at,
        has_email_consent,
        has_tracking_consent,
        max(updated_at) over (partition by user_id) as latest_decision_at
    from latest
),

person_consent as (
    select
        user_id,
        bool_and(has_email_consent) as has_email_consent,
        bool_and(has_tracking_consent) as has_tracking_consent
    from decisions
    where updated_at = latest_decision_at
    group by user_id
)

select
    l.contact_id,
    l.user_id,
    l.created_at,
    l.email_hash,
    l.email_sha256,
    l.birth_date,
    l.gender,
    l.country_code,
    l.income_band,
    l.interest_tags,
    pc.has_email_consent,
    pc.has_tracking_consent,
    l.crm_preferred_channel
from latest as l
inner join person_consent as pc on l.user_id = pc.user_id
