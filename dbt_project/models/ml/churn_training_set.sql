-- Churn training rows, one per (user, snapshot): features as of each date in var('feature_dates') (read from
-- user_features_history) with the label "no completed purchase in the next churn_horizon_days", among users
-- with at least one purchase by then. A snapshot's label window must end on or before var('as_of'): only
-- outcomes known on the as-of date are used; later snapshots serve as the time-based holdout.
{% set horizon = var('churn_horizon_days') %}
with features as (
    select * from {{ ref('user_features_history') }}
    where as_of in ({{ feature_dates_list() }})
        and as_of + {{ horizon }} <= {{ as_of_date() }}
        and lifetime_orders > 0
),

labels as (
    select
        f.user_id,
        f.as_of,
        count(o.order_id) as orders_in_horizon
    from features as f
    left join {{ ref('int_orders_attributed') }} as o
        on f.user_id = o.user_id
            and o.status = 'completed'
            and f.as_of < o.order_date
            and o.order_date <= f.as_of + {{ horizon }}
    group by 1, 2
)

select
    f.*,
    {{ as_of_date() }} as label_as_of,
    {{ horizon }} as horizon_days,
    l.orders_in_horizon = 0 as churned
from features as f
inner join labels as l on f.user_id = l.user_id and f.as_of = l.as_of
