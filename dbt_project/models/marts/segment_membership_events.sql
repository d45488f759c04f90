-- Users entering and exiting segments between consecutive published dates (see store_segment_membership_events).
{{ config(materialized='view') }}
{{ published(ref('store_segment_membership_events')) }}
