-- Rule-segment memberships for every as_of published (the latest publication of each date).
{{ config(materialized='view') }}
{{ published(ref('store_user_segment_history')) }}
