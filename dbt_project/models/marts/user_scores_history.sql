-- Every user's scores for every as_of scored (see stg_scoring__user_scores). A view: the scoring task replaces a
-- date's partition in one transaction, so readers see each date whole, and which model version scored it.
{{ config(materialized='view') }}
select * from {{ ref('stg_scoring__user_scores') }}
