-- user_features for every as_of ever built: one partition per as_of, replaced on rerun (delete+insert).
-- Training sets read past partitions, so a model is trained on what was known on each date.
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='as_of',
    on_schema_change='append_new_columns'
) }}
select * from {{ ref('audit_user_features') }}
