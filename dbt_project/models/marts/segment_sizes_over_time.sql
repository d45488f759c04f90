-- Segment sizes per published date and the stability of primary segments (see store_segment_sizes_over_time).
{{ config(materialized='view') }}
{{ published(ref('store_segment_sizes_over_time')) }}
