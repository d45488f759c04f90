"""Source specifications: the `sources` section of segflow.yml, validated.

Each entry names one source; `kind` (sql, files, http) is inferred from its keys when omitted and `dataset`
(contacts, events, transactions) from the well-known names crm/events/transactions. A source set to null
or with `enabled: false` is switched off (e.g. a transactions-only setup). See docs/extracts.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segflow.core.config import SOURCE_COMMON_KEYS as COMMON_KEYS
from segflow.core.config import SOURCE_KIND_KEYS as KIND_KEYS
from segflow.core.config import Settings
from segflow.extract.contracts import DATASETS, Dataset
from segflow.extract.mapping import Mapping

DEFAULT_DATASET = {
    "crm": "contacts",
    "contacts": "contacts",
    "events": "events",
    "transactions": "transactions",
    "erasure": "erasure_requests",
    "erasure_requests": "erasure_requests",
}


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str
    dataset: Dataset
    mapping: Mapping
    options: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.options.get(key)
        return default if value is None else value


def _infer_kind(name: str, cfg: dict) -> str:
    if cfg.get("kind"):
        return str(cfg["kind"])
    if "path" in cfg:
        return "files"
    if "table" in cfg:
        return "sql"
    if "url" in cfg and str(cfg["url"]).startswith(("http://", "https://")):
        return "http"
    if "url" in cfg or "conn_id" in cfg:
        return "sql"
    raise ValueError(f"sources.{name}: cannot tell its kind; set kind: sql | files | http")


def source_specs(settings: Settings) -> list[SourceSpec]:
    specs = []
    for name, cfg in (settings.get("sources", default={}) or {}).items():
        if cfg is None or (isinstance(cfg, dict) and cfg.get("enabled") is False):
            continue
        if not isinstance(cfg, dict):
            raise ValueError(f"sources.{name}: expected a mapping, got {cfg!r}")
        kind = _infer_kind(name, cfg)
        if kind not in KIND_KEYS:
            raise ValueError(f"sources.{name}.kind: unknown kind {kind!r} (sql, files, http)")
        unknown = set(cfg) - KIND_KEYS[kind] - COMMON_KEYS
        if unknown:
            raise ValueError(
                f"sources.{name}: unknown key(s) {sorted(unknown)} for a {kind} source; "
                f"allowed: {sorted(KIND_KEYS[kind] | COMMON_KEYS)}"
            )
        dataset_name = cfg.get("dataset") or DEFAULT_DATASET.get(name)
        if dataset_name not in DATASETS:
            raise ValueError(f"sources.{name}.dataset: expected one of {sorted(DATASETS)}, got {dataset_name!r}")
        dataset = DATASETS[dataset_name]
        if kind == "sql" and not (cfg.get("url") or cfg.get("conn_id")):
            raise ValueError(f"sources.{name}: a sql source needs url or conn_id")
        if kind == "files" and not cfg.get("path"):
            raise ValueError(f"sources.{name}: a files source needs path")
        if kind == "http" and not (cfg.get("url") or cfg.get("conn_id")):
            raise ValueError(f"sources.{name}: an http source needs url or conn_id")
        mapping = Mapping.from_config(cfg.get("mapping"), dataset, f"sources.{name}")
        options = {k: v for k, v in cfg.items() if k not in COMMON_KEYS}
        specs.append(SourceSpec(name, kind, dataset, mapping, options))
    return specs
