-- The stored partitions behind marts.user_features_history: each build appends its as_of partition with its
-- invocation id; the partition becomes visible when the build publishes (macros/publication.sql).
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='append_new_columns',
    pre_hook="{{ drop_unpublished(as_of_date()) }}"
) }}
select
    f.*,
    '{{ invocation_id }}' as _publish_id
from {{ ref('audit_user_features') }} as f
