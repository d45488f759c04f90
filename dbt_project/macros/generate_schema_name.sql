{# Use the folder's schema as-is (staging, marts, ...) instead of dbt's default <target>_<schema>. The audit
   models name their own schema (macros/as_of.sql audit_schema()). #}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}
    {%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
