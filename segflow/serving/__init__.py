"""The segment API's serving side: snapshots of the published marts, the stores they are served from, API keys,
and the HTTP API itself (docs/serving.md)."""
