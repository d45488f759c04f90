-- Published user features: the audited candidate, swapped in only after the quality gates pass.
select * from {{ ref('audit_user_features') }}
