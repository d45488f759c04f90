-- user_features for every as_of published: the stored partitions of their latest publication. Training sets read
-- past partitions, so a model is trained on what was known on each date.
{{ config(materialized='view') }}
{{ published(ref('store_user_features_history')) }}
