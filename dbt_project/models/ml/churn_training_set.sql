-- Churn training rows: features as of var('feature_as_of') (read from user_features_history) with the label
-- "no completed purchase in the next churn_horizon_days", among users with at least one purchase by then.
-- The label window must end on or before var('as_of'): only outcomes known on the as-of date are used.
{% set horizon = var('churn_horizon_days') %}
with features as (
    select * from {{ ref('user_features_history') }}
    where as_of = {{ feature_as_of_date() }} and lifetime_orders > 0
),

later_orders as (
    select user_id, count(*) as orders_in_horizon
    from {{ ref('int_orders_attributed') }}
    where status = 'completed'
      and order_date > {{ feature_as_of_date() }}
      and order_date <= {{ feature_as_of_date() }} + {{ horizon }}
    group by 1
)

select
    f.*,
    {{ as_of_date() }} as label_as_of,
    {{ horizon }} as horizon_days,
    coalesce(l.orders_in_horizon, 0) = 0 as churned
from features as f
left join later_orders as l on f.user_id = l.user_id
where {{ feature_as_of_date() }} + {{ horizon }} <= {{ as_of_date() }}
