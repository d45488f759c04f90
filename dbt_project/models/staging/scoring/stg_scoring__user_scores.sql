-- Every user's scores for every as_of scored, as the scoring task wrote them (one partition per as_of).
select
    user_id,
    as_of,
    cluster_id,
    persona,
    churn_probability,
    churn_risk_band,
    churn_reasons,
    expected_orders_90d,
    p_alive,
    clv_12m,
    primary_segment,
    clusterer_version,
    churn_model_version,
    clv_model_version,
    scored_at
from {{ source('scoring', 'user_scores') }}
