{{ config(schema=audit_schema() ~ '_intermediate') }}
-- Every identifier seen up to the as-of date, linked to one canonical user_id, with the evidence.
-- Rules (deterministic, in order): CRM contact id -> canonical contact (same email => oldest contact);
-- transaction reference = contact id, or = a contact's email (hash match); analytics user id = contact id;
-- anonymous id -> the user it logged in as most often. With no CRM source at all, a transaction
-- reference is its own user. Behaviour links (analytics user id, anonymous ids) only for people who consented to
-- tracking: without consent their events are neither attributed nor used to stitch devices.
with contacts as (
    select * from {{ ref('int_contacts_versioned_as_of') }}
),

has_crm as (
    select count(*) > 0 as has_contacts from contacts
),

orders as (
    select distinct
        customer_ref,
        customer_email_hash
    from {{ ref('int_orders_aggregated') }}
    where order_ts < {{ as_of_end() }} and file_date <= {{ as_of_date() }}
),

events as (
    select
        anonymous_id,
        analytics_user_id
    from {{ ref('stg_analytics__events') }}
    where event_ts < {{ as_of_end() }} and file_date <= {{ as_of_date() }} and not is_future_timestamp
),

contact_links as (
    select
        'crm_contact_id' as identifier_type,
        contact_id as identifier,
        user_id,
        case when contact_id = user_id then 'crm contact' else 'duplicate contact sharing an email' end as evidence
    from contacts
),

email_links as (
    select distinct
        'email_hash' as identifier_type,
        email_hash as identifier,
        user_id,
        'crm email' as evidence
    from contacts
    where email_hash is not null and contact_id = user_id
),

order_links as (
    select
        'transaction_customer_ref' as identifier_type,
        coalesce(o.customer_email_hash, o.customer_ref) as identifier,
        coalesce(by_id.user_id, by_email.user_id, case when not h.has_contacts then o.customer_ref end) as user_id,
        case
            when by_id.user_id is not null then 'reference is a crm contact id'
            when by_email.user_id is not null then 'reference is a crm email'
            when not h.has_contacts then 'transactions-only source: reference is the user'
        end as evidence
    from orders as o
    cross join has_crm as h
    left join contacts as by_id on o.customer_ref = by_id.contact_id
    left join email_links as by_email on o.customer_email_hash = by_email.identifier
),

analytics_user_links as (
    select distinct
        'analytics_user_id' as identifier_type,
        e.analytics_user_id as identifier,
        c.user_id,
        'analytics user id is a crm contact id' as evidence
    from events as e
    inner join contacts as c on e.analytics_user_id = c.contact_id
    where c.has_tracking_consent
),

anonymous_logins as (
    select
        e.anonymous_id,
        c.user_id,
        count(*) as n
    from events as e
    inner join contacts as c on e.analytics_user_id = c.contact_id
    where c.has_tracking_consent
    group by 1, 2
),

anonymous_links as (
    select
        'anonymous_id' as identifier_type,
        anonymous_id as identifier,
        user_id,
        'anonymous id seen logged in as this user (' || cast(n as varchar) || ' events)' as evidence
    from (
        select
            *,
            row_number() over (partition by anonymous_id order by n desc, user_id asc) as login_rank
        from anonymous_logins
    ) as ranked
    where login_rank = 1
)

select * from contact_links
union all
select * from email_links
union all
select * from order_links
where user_id is not null
union all
select * from analytics_user_links
union all
select * from anonymous_links
