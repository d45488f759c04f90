-- Published rule-segment memberships: the audited candidate, swapped in after the quality gates pass.
select * from {{ ref('audit_user_segments') }}
