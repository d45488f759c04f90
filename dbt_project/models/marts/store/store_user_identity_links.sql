-- The stored identity graph behind marts.user_identity_links, one graph per as_of built; only the latest
-- published date is kept (config meta keep: latest).
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='append_new_columns',
    pre_hook="{{ drop_unpublished(as_of_date()) }}",
    meta={'keep': 'latest'}
) }}
select
    {{ as_of_date() }} as as_of,
    l.identifier_type,
    l.identifier,
    l.user_id,
    l.evidence,
    '{{ invocation_id }}' as _publish_id
from {{ ref('int_identities_resolved') }} as l
