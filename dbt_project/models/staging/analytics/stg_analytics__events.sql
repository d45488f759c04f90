-- One row per analytics event: re-sent events resolved to the latest load.
{{ latest_version(ref('base_analytics__events'), 'event_id', 'file_date desc, loaded_at desc') }}
