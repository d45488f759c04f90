-- The identity graph as of var('as_of'): every identifier linked to a canonical user, with the evidence.
select {{ as_of_date() }} as as_of, * from {{ ref('int_identities_resolved') }}
