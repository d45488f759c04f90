-- The stored partitions behind marts.user_segment_history (see store_user_features_history).
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    on_schema_change='append_new_columns',
    pre_hook="{{ drop_unpublished(as_of_date()) }}"
) }}
select
    s.user_id,
    s.as_of,
    s.rule_name,
    s.segment_name,
    s.priority,
    s.is_primary,
    s.evidence,
    '{{ invocation_id }}' as _publish_id
from {{ ref('audit_user_segments') }} as s
