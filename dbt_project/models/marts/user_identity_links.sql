-- The identity graph as of the latest date published: every identifier linked to a canonical user, with evidence.
{{ config(materialized='view') }}
with graph as (
    {{ published(ref('store_user_identity_links')) }}
)

select graph.*
from graph
where graph.as_of = (select max(graph_dates.as_of) from graph as graph_dates)
