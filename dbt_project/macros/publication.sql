{#
  All-or-nothing publishing (write-audit-publish, the publish step).

  The published tables are stored with the invocation that wrote each row (_publish_id) in marts_store.store_*;
  readers see marts.* views that show, for every (relation, as_of), only the rows of its latest publication in the
  ledger marts_store.publications. A build appends its rows - invisible - and at its very end (on-run-end) records
  every partition it wrote in the ledger with ONE insert statement, only if every published model and test of the
  invocation succeeded. A run killed or failing before that point changes nothing readers see: they keep the
  previous set, never a mix. Superseded and orphaned rows are deleted afterwards (they are invisible anyway).
#}

{% macro publication_ledger() -%}
    {{ api.Relation.create(database=target.database, schema='marts_store', identifier='publications') }}
{%- endmacro %}

{% macro create_publication_ledger() %}
    {% do run_query("create schema if not exists marts_store") %}
    {% do run_query("create table if not exists " ~ publication_ledger()
                    ~ " (relation varchar, as_of date, publish_id varchar, published_at timestamp)") %}
{% endmacro %}

{# The published rows of a store model: its latest publication per as_of. #}
{% macro published(store_relation) -%}
    {%- set name = store_relation.identifier -%}
    select {{ columns_except(store_relation, ['_publish_id'], 's') }}
    from {{ store_relation }} as s
    inner join (
        select as_of, publish_id
        from (
            select
                as_of,
                publish_id,
                row_number() over (partition by as_of order by published_at desc, publish_id desc) as publication_rank
            from {{ publication_ledger() }}
            where relation = '{{ name }}'
        ) as ranked
        where publication_rank = 1
    ) as p
        on s.as_of = p.as_of and s._publish_id = p.publish_id
{%- endmacro %}

{# The relation's columns but `excluded`, prefixed with `alias` (portable: no SELECT * EXCLUDE on PostgreSQL). #}
{% macro columns_except(relation, excluded, alias) -%}
    {%- set columns = [] -%}
    {%- if execute -%}
        {%- set columns = adapter.get_columns_in_relation(relation) | map(attribute='name') | reject('in', excluded) | list -%}
    {%- endif -%}
    {%- if columns -%}
        {%- for column in columns -%}{{ alias }}.{{ adapter.quote(column) }}{{ ', ' if not loop.last }}{%- endfor -%}
    {%- else -%}
        {{ alias }}.*
    {%- endif -%}
{%- endmacro %}

{# Before a store model appends: drop rows of publications that never happened (a killed or failed run). #}
{% macro drop_unpublished(as_of_dates_sql) %}
    {% if is_incremental() %}
        delete from {{ this }}
        where as_of in ({{ as_of_dates_sql }})
            and _publish_id not in (
                select publish_id from {{ publication_ledger() }} where relation = '{{ this.identifier }}'
            )
    {% endif %}
{% endmacro %}

{# on-run-end: the switch. #}
{% macro publish_partitions(results) %}
    {% if not execute %}{{ return('') }}{% endif %}
    {% set stores = [] %}
    {% set blocked = [] %}
    {% for result in results %}
        {% set node = result.node %}
        {% if 'publish' in node.tags or node.resource_type == 'test' and 'publish' in (node.tags or []) %}
            {% if result.status not in ['success', 'pass', 'warn'] %}{% do blocked.append(node.name) %}{% endif %}
        {% endif %}
        {% if node.resource_type == 'model' and node.name.startswith('store_') and result.status == 'success' %}
            {% do stores.append(node) %}
        {% endif %}
    {% endfor %}
    {% if blocked or not stores %}
        {% if blocked %}{{ log("not published (failed: " ~ blocked | join(', ') ~ "): readers keep the previous set", info=True) }}{% endif %}
        {{ return('') }}
    {% endif %}
    {% set parts = [] %}
    {% for node in stores %}
        {% set relation = api.Relation.create(database=node.database, schema=node.schema, identifier=node.alias) %}
        {% do parts.append("select distinct '" ~ node.name ~ "' as relation, as_of, _publish_id as publish_id from "
                           ~ relation ~ " where _publish_id = '" ~ invocation_id ~ "'") %}
    {% endfor %}
    {# One statement: every partition of this invocation becomes visible at once, on any engine. #}
    {% do run_query("insert into " ~ publication_ledger() ~ " (relation, as_of, publish_id, published_at) "
                    ~ "select relation, as_of, publish_id, " ~ dbt.current_timestamp() ~ " from ("
                    ~ parts | join(' union all ') ~ ") as written") %}
    {# Superseded rows of the partitions just published (invisible now), and the ledger's old entries for them. #}
    {% for node in stores %}
        {% set relation = api.Relation.create(database=node.database, schema=node.schema, identifier=node.alias) %}
        {% do run_query("delete from " ~ relation ~ " where _publish_id <> '" ~ invocation_id ~ "' and as_of in ("
                        ~ "select as_of from " ~ publication_ledger() ~ " where relation = '" ~ node.name
                        ~ "' and publish_id = '" ~ invocation_id ~ "')") %}
    {% endfor %}
    {{ log("published " ~ stores | map(attribute='name') | join(', '), info=True) }}
{% endmacro %}

{# Segment memberships as they will be once this build publishes: the published ones of the other dates and the
   rows this invocation stored for its own date. #}
{% macro memberships_with_this_build() %}
    select
        h.user_id,
        h.as_of,
        h.segment_name,
        h.is_primary
    from {{ ref('user_segment_history') }} as h
    where h.as_of <> {{ as_of_date() }}
    union all
    select
        n.user_id,
        n.as_of,
        n.segment_name,
        n.is_primary
    from {{ ref('store_user_segment_history') }} as n
    where n._publish_id = '{{ invocation_id }}'
{% endmacro %}

{# The dates a derived store model writes: this build's as_of and the next published date after it. #}
{% macro recomputed_dates_sql() -%}
    select {{ as_of_date() }} union all
    select min(as_of) from {{ publication_ledger() }} where relation = 'store_user_segment_history' and as_of > {{ as_of_date() }}
{%- endmacro %}
