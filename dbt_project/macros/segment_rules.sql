{#
  Compile the analyst-editable rule seed (seeds/segment_rules.csv) into one UNION ALL query.
  Each rule: segment_name, priority (1 = highest), rule_sql (a predicate on user_features),
  evidence_columns (|-separated columns recorded as the reason), segment_name_sql (optional
  expression for parameterised names, e.g. 'Interested in ' || interest_category).
#}
{% macro compile_segment_rules(features_relation, rules_seed='segment_rules') %}
    {%- if execute -%}
        {#- The rules are read from the built seed table itself (seeds live in schema `reference`), also inside
            dbt unit tests where ref() of the seed points at a fixture CTE: unit tests then check the real rules. -#}
        {%- set rules_relation = adapter.get_relation(target.database, generate_schema_name('reference', none), rules_seed) -%}
        {%- if rules_relation is none and flags.WHICH in ('run', 'build', 'test') -%}
            {{ exceptions.raise_compiler_error("seed " ~ rules_seed ~ " is not built yet: run dbt seed (or dbt build)") }}
        {%- elif rules_relation is none -%}
            {#- docs generate / compile on an empty warehouse: show the model without its compiled rules -#}
            {%- set rules = [] -%}
        {%- else -%}
            {%- set rules = run_query("select segment_name, priority, rule_sql, evidence_columns, segment_name_sql from " ~ rules_relation ~ " where enabled order by priority") -%}
        {%- endif -%}
    {%- else -%}
        {%- set rules = [] -%}
    {%- endif -%}
    {%- if rules | length == 0 %}
    select cast(null as varchar) as user_id, cast(null as date) as as_of, cast(null as varchar) as rule_name,
           cast(null as varchar) as segment_name, cast(null as integer) as priority, cast(null as varchar) as evidence
    where false
    {%- endif %}
    {%- for rule in rules %}
    {%- set evidence = (rule['evidence_columns'] or '').split('|') | map('trim') | reject('equalto', '') | list %}
    select
        user_id,
        as_of,
        '{{ rule["segment_name"] }}' as rule_name,
        {{ rule['segment_name_sql'] if rule['segment_name_sql'] else "'" ~ rule['segment_name'] ~ "'" }} as segment_name,
        {{ rule['priority'] }} as priority,
        {% if evidence %}{{ json_object_text(evidence) }}{% else %}'{}'{% endif %} as evidence
    from {{ features_relation }}
    where {{ rule['rule_sql'] }}
    {% if not loop.last %}union all{% endif %}
    {%- endfor %}
{% endmacro %}
