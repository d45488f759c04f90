-- Published rule-segment memberships: the latest as_of ever published (see user_features).
select
    history.user_id,
    history.as_of,
    history.rule_name,
    history.segment_name,
    history.priority,
    history.is_primary,
    history.evidence
from {{ ref('user_segment_history') }} as history
where history.as_of = (select max(latest.as_of) from {{ ref('user_segment_history') }} as latest)
