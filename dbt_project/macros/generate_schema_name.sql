{# Use the folder's schema as-is (staging, marts, ...) instead of dbt's default <target>_<schema>.
   The audit schema is configurable (var audit_schema) so point-in-time training builds use their own; the
   intermediate views built for a date (audit_intermediate) follow it for the same reason. #}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}
    {%- elif custom_schema_name | trim == 'audit' -%}{{ var('audit_schema', 'audit') }}
    {%- elif custom_schema_name | trim == 'audit_intermediate' -%}{{ var('audit_schema', 'audit') }}_intermediate
    {%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
