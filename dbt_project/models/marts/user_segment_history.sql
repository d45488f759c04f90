-- Rule-segment memberships for every as_of published: one partition per as_of, replaced on rerun.
{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='as_of',
          on_schema_change='append_new_columns') }}
select
    user_id,
    as_of,
    rule_name,
    segment_name,
    priority,
    is_primary,
    evidence
from {{ ref('audit_user_segments') }}
