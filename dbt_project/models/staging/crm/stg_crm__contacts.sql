-- One row per contact version (contact_id, updated_at): a version delivered again resolves to its latest load.
{{ latest_version(ref('base_crm__contacts'), 'contact_id, updated_at', 'loaded_at desc') }}
