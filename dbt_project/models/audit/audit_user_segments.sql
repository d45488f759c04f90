{{ config(schema=audit_schema()) }}
-- Candidate rule-segment memberships compiled from the analyst-editable seed `segment_rules`.
-- Every membership is kept (multi-membership); the highest-priority one is the user's primary segment.
-- depends_on: {{ ref('segment_rules') }}
with memberships as (
    {{ compile_segment_rules(ref('audit_user_features'), 'segment_rules') }}
)

select
    user_id,
    as_of,
    rule_name,
    segment_name,
    priority,
    row_number() over (partition by user_id order by priority, segment_name) = 1 as is_primary,
    evidence
from memberships
