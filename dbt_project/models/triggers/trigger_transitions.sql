{#-
  The real-time trigger rules (seeds/trigger_rules.csv) evaluated in batch over one day's events (var('as_of')):
  every time a user entered or left a trigger that day, by event time. `segflow stream` evaluates the same rules
  on the live stream (segflow/realtime/engine.py); replaying a day through it gives exactly these rows (tested), so
  this model is the batch truth to reconcile the stream with. Built on demand (`segflow stream reconcile`), not
  by the daily build.

  A rule's membership can only change at its change points: an event's time, an event's time plus the window,
  and for `absence` rules the start plus the window and plus the active period. Membership is evaluated at each;
  a transition is where it differs from the previous point. Membership at a time depends on the events of the
  rules' longest lookback before it, and a transition on its previous change point: the events of twice that span
  before the day are read too, so a stream running across midnight gives the same rows. Events are attributed with
  the identity graph as of the day (consented tracking only); `return` rules read the lifecycle stage of the
  profile published before the day - what the live stream read that day - or of var('trigger_profile_as_of').
-#}
{% set weights = var('intent_weights') %}
{% set minute = "interval '1 minute'" %}
{% set profile_as_of = var('trigger_profile_as_of', none) %}
with rules as (
    select * from {{ ref('trigger_rules') }}
    where enabled
),

context as (
    select
        cast({{ as_of_date() }} as timestamp)
        - 2 * max(window_minutes + coalesce(active_minutes, 0)) * {{ minute }} as since
    from rules
),

profile_date as (
    select max(as_of) as as_of from {{ ref('stg_scoring__user_scores') }}
    {% if profile_as_of %}
        where as_of = cast('{{ profile_as_of }}' as date)
    {% else %}
        where as_of < {{ as_of_date() }}
    {% endif %}
),

stages as (
    select
        f.user_id,
        f.lifecycle_stage
    from {{ ref('user_features_history') }} as f
    inner join profile_date as p on f.as_of = p.as_of
),

events as (
    select
        user_id,
        event_id,
        event_ts,
        event_type,
        product_category,
        case event_type{% for event_type, weight in weights.items() if event_type != 'cart_abandonment' %}
                when '{{ event_type }}' then {{ weight }}{% endfor %}
            else 0
        end as points
    from {{ ref('int_events_attributed') }}
    where event_ts >= (select c.since from context as c)
),

-- The events each rule reads, with their role (start / cancel / counted).
rule_events as (
    select
        r.trigger_name,
        r.kind,
        e.*,
        position('|' || e.event_type || '|' in '|' || coalesce(r.event_types, '') || '|') > 0 as is_start,
        position('|' || e.event_type || '|' in '|' || coalesce(r.cancel_event_types, '') || '|') > 0 as is_cancel
    from events as e
    inner join rules as r
        on r.kind = 'return'
            or (r.kind = 'points' and e.points <> 0)
            or (
                r.kind in ('repeat_without', 'absence')
                and position(
                    '|' || e.event_type || '|'
                    in '|' || coalesce(r.event_types, '') || '|' || coalesce(r.cancel_event_types, '') || '|'
                ) > 0
            )
),

change_points as (
    select
        trigger_name,
        user_id,
        event_ts as changed_at
    from rule_events
    where kind <> 'absence'
    union
    select
        e.trigger_name,
        e.user_id,
        e.event_ts + r.window_minutes * {{ minute }} as changed_at
    from rule_events as e inner join rules as r on e.trigger_name = r.trigger_name
    where e.kind <> 'absence'
    union
    select
        trigger_name,
        user_id,
        event_ts as changed_at
    from rule_events
    where kind = 'absence' and is_cancel
    union
    select
        e.trigger_name,
        e.user_id,
        e.event_ts + r.window_minutes * {{ minute }} as changed_at
    from rule_events as e inner join rules as r on e.trigger_name = r.trigger_name
    where e.kind = 'absence' and e.is_start
    union
    select
        e.trigger_name,
        e.user_id,
        e.event_ts + (r.window_minutes + r.active_minutes) * {{ minute }} as changed_at
    from rule_events as e inner join rules as r on e.trigger_name = r.trigger_name
    where e.kind = 'absence' and e.is_start
),

-- Sliding windows (T - window, T]: points, repeat_without, return.
in_window as (
    select
        c.trigger_name,
        c.user_id,
        c.changed_at,
        e.event_id,
        e.event_ts,
        e.points,
        e.is_start,
        e.is_cancel,
        e.product_category
    from change_points as c
    inner join rules as r on c.trigger_name = r.trigger_name and r.kind <> 'absence'
    inner join rule_events as e
        on
            c.trigger_name = e.trigger_name and c.user_id = e.user_id
            and e.event_ts > c.changed_at - r.window_minutes * {{ minute }} and c.changed_at >= e.event_ts
),

window_totals as (
    select
        trigger_name,
        user_id,
        changed_at,
        sum(points) as points,
        count(*) as events,
        count(*) filter (where is_cancel) as cancels,
        max(event_ts) as last_event_ts
    from in_window
    group by trigger_name, user_id, changed_at
),

category_counts as (
    select
        trigger_name,
        user_id,
        changed_at,
        product_category,
        count(*) as events,
        row_number()
            over (partition by trigger_name, user_id, changed_at order by count(*) desc, product_category)
            as rank
    from in_window
    where is_start and product_category is not null
    group by trigger_name, user_id, changed_at, product_category
),

window_members as (
    select
        c.trigger_name,
        c.user_id,
        c.changed_at,
        case
            when r.kind = 'points' then coalesce(t.points, 0) > r.threshold
            when r.kind = 'repeat_without'
                then coalesce(t.cancels, 0) = 0 and coalesce(k.events, 0) >= r.threshold
            else s.lifecycle_stage = r.lifecycle_stage and t.events > 0
        end as is_member,
        case when r.kind = 'repeat_without' then k.product_category end as product_category,
        case when r.kind = 'points' then t.points end as points
    from change_points as c
    inner join rules as r on c.trigger_name = r.trigger_name and r.kind <> 'absence'
    left join
        window_totals as t
        on c.trigger_name = t.trigger_name and c.user_id = t.user_id and c.changed_at = t.changed_at
    left join category_counts as k
        on c.trigger_name = k.trigger_name and c.user_id = k.user_id and c.changed_at = k.changed_at and k.rank = 1
    left join stages as s on c.user_id = s.user_id
),

-- Absence: a start a with T - window - active < a <= T - window and no cancelling event in (a, T].
absence_starts as (
    select
        c.trigger_name,
        c.user_id,
        c.changed_at,
        e.event_ts,
        e.product_category,
        row_number() over (partition by c.trigger_name, c.user_id, c.changed_at order by e.event_ts, e.event_id) as rank
    from change_points as c
    inner join rules as r on c.trigger_name = r.trigger_name and r.kind = 'absence'
    inner join rule_events as e
        on
            c.trigger_name = e.trigger_name and c.user_id = e.user_id and e.is_start
            and e.event_ts > c.changed_at - (r.window_minutes + r.active_minutes) * {{ minute }}
            and e.event_ts <= c.changed_at - r.window_minutes * {{ minute }}
    where not exists (
            select 1 from rule_events as x
            where
                x.trigger_name = c.trigger_name and x.user_id = c.user_id and x.is_cancel
                and x.event_ts > e.event_ts and x.event_ts <= c.changed_at
        )
),

absence_members as (
    select
        c.trigger_name,
        c.user_id,
        c.changed_at,
        a.event_ts is not null as is_member,
        a.product_category,
        cast(null as {{ dbt.type_float() }}) as points
    from change_points as c
    inner join rules as r on c.trigger_name = r.trigger_name and r.kind = 'absence'
    left join absence_starts as a
        on c.trigger_name = a.trigger_name and c.user_id = a.user_id and c.changed_at = a.changed_at and a.rank = 1
),

evaluated as (
    select * from window_members
    union all
    select * from absence_members
),

changes as (
    select
        *,
        lag(is_member) over (partition by trigger_name, user_id order by changed_at) as was_member
    from evaluated
)

select
    trigger_name,
    user_id,
    case when is_member then 'entered' else 'exited' end as transition,
    changed_at,
    case when is_member then product_category end as product_category,
    case when is_member then points end as points,
    {{ as_of_date() }} as as_of
from changes
where
    coalesce(is_member, false) <> coalesce(was_member, false)
    and changed_at >= cast({{ as_of_date() }} as timestamp)
    and changed_at < {{ as_of_end() }}
