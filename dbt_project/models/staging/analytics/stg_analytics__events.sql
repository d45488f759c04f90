{#-
  Analytics events, one row per event_id (a re-sent event takes its latest version). Incremental by the date
  events became known (file_date) with a lookback: each run re-reads the files of the last
  var('events_lookback_days') days before the newest one already loaded and replaces those events by event_id.
  Late files older than the lookback need a full refresh (`dbt build --full-refresh`, the build DAG's
  full_refresh param); a full refresh gives the same table (tested).
-#}
{{ config(materialized='incremental', unique_key='event_id', incremental_strategy='delete+insert') }}

{% if is_incremental() %}
    {% set since = "(select coalesce(max(file_date), date '1900-01-01') from " ~ this ~ ") - " ~ var('events_lookback_days') %}
{{ latest_version(ref('base_analytics__events'), 'event_id', 'file_date desc, loaded_at desc', where='file_date >= ' ~ since) }}
{% else %}
    {{ latest_version(ref('base_analytics__events'), 'event_id', 'file_date desc, loaded_at desc') }}
{% endif %}
