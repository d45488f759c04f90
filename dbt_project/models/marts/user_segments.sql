-- Published rule-segment memberships: the latest as_of ever published (see user_features).
select user_id, as_of, rule_name, segment_name, priority, is_primary, evidence
from {{ ref('user_segment_history') }}
where as_of = (select max(as_of) from {{ ref('user_segment_history') }})
