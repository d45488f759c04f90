"""The extract contract: the canonical datasets every source is mapped onto (documented in docs/extracts.md).

A source (SQL table, file drop, HTTP API) delivers one dataset. Its columns are renamed/derived onto the
canonical names below by the source's `mapping`; required columns must be present and non-empty in every
row, optional ones may be absent (then NULL). Types are the raw-table types after parsing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # DuckDB type in the raw table
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Dataset:
    name: str
    raw_table: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # identifies one record; versions of it are told apart by the watermark column
    description: str
    # Salted hashes computed at load: hash column -> (canonical column, SQL condition on it or None).
    pii_hashes: tuple[tuple[str, str, str | None], ...] = ()
    watermark: str = "updated_at"  # the version column of a relational source (CRM-like: versions are kept)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


CONTACTS = Dataset(
    "contacts",
    "crm_contacts",
    (
        Column("contact_id", "VARCHAR", True, "CRM contact identifier; becomes the canonical user_id"),
        Column("created_at", "TIMESTAMP", True, "when the contact was created"),
        Column("updated_at", "TIMESTAMP", True, "when this version of the contact was written (the watermark)"),
        Column("email", "VARCHAR", False, "email address (PII: hashed after staging)"),
        Column("phone", "VARCHAR", False, "phone number (PII: hashed after staging)"),
        Column("first_name", "VARCHAR", False, "PII: never leaves staging"),
        Column("last_name", "VARCHAR", False, "PII: never leaves staging"),
        Column("birth_date", "DATE", False, "date of birth (age band is derived from it)"),
        Column("gender", "VARCHAR", False, "free text, lower-cased in staging"),
        Column("country", "VARCHAR", False, "ISO country code or name"),
        Column("city", "VARCHAR", False, "city name"),
        Column("income_band", "VARCHAR", False, "e.g. low / middle / high"),
        Column("consent_email_marketing", "BOOLEAN", False, "marketing consent; absent means no consent"),
        Column("consent_tracking", "BOOLEAN", False, "tracking consent; absent means no consent"),
        Column("preferred_channel", "VARCHAR", False, "channel the contact prefers"),
        Column("interests", "VARCHAR", False, "comma-separated interests"),
    ),
    key=("contact_id",),
    description="CRM contacts, one row per contact version",
    pii_hashes=(("email_hash", "email", None), ("phone_hash", "phone", None)),
)

EVENTS = Dataset(
    "events",
    "events",
    (
        Column("event_id", "VARCHAR", True, "unique event identifier (re-sent events are deduplicated on it)"),
        Column("anonymous_id", "VARCHAR", True, "device/browser identifier, known before login"),
        Column("user_id", "VARCHAR", False, "logged-in user id (the CRM contact id) when known"),
        Column("session_id", "VARCHAR", False, "session identifier"),
        Column("event_ts", "TIMESTAMP", True, "when the event happened (offsets honoured, stored in UTC)"),
        Column(
            "event_type",
            "VARCHAR",
            True,
            "page_view, product_view, search, add_to_cart, begin_checkout, purchase, "
            "wishlist_add, email_open, email_click, login ...",
        ),
        Column("product_category", "VARCHAR", False, "category of the product involved"),
        Column("device", "VARCHAR", False, "mobile / desktop / tablet"),
        Column("channel", "VARCHAR", False, "acquisition channel of the session"),
        Column("utm_source", "VARCHAR", False, "campaign source"),
    ),
    key=("event_id",),
    description="web/app analytics events",
)

TRANSACTIONS = Dataset(
    "transactions",
    "transactions",
    (
        Column("order_id", "VARCHAR", True, "order (invoice) identifier"),
        Column("line_id", "VARCHAR", False, "line within the order; absent when each row is a whole order"),
        Column("customer_ref", "VARCHAR", True, "customer reference: CRM contact id, email or the shop's customer id"),
        Column("order_ts", "TIMESTAMP", True, "when the order was placed (offsets honoured, stored in UTC)"),
        Column("amount", "DOUBLE", True, "line (or order) amount in `currency`; negative on cancellations/refunds"),
        Column("currency", "VARCHAR", True, "ISO 4217 code of the amount"),
        Column("status", "VARCHAR", True, "completed / cancelled / refunded / pending (other values: 'other')"),
        Column("line_type", "VARCHAR", False, "product (default) / fee / discount / adjustment"),
        Column("category", "VARCHAR", False, "product category"),
        Column("product_id", "VARCHAR", False, "product (SKU, stock code) of the line, when the source has one"),
        Column("item_count", "INTEGER", False, "number of items (quantity)"),
    ),
    key=("order_id", "line_id"),
    description="orders or order lines from the shop",
    # A reference that is an email is matched on its hash, never in clear text downstream.
    pii_hashes=(("customer_ref_hash", "customer_ref", "position('@' in {value}) > 0"),),
)

ERASURE_REQUESTS = Dataset(
    "erasure_requests",
    "erasure_requests",
    (
        Column("request_id", "VARCHAR", True, "identifier of the request in the system it came from"),
        Column("contact_id", "VARCHAR", False, "the CRM contact to erase (this or email)"),
        Column(
            "email", "VARCHAR", False, "the email address to erase, with every contact holding it (this or contact_id)"
        ),
        Column("requested_at", "TIMESTAMP", True, "when the person asked (GDPR art. 17 / CCPA deletion)"),
    ),
    key=("request_id",),
    description="erasure (right to be forgotten) requests, applied everywhere by the next run",
    pii_hashes=(("email_hash", "email", None),),
    watermark="requested_at",
)

DATASETS: dict[str, Dataset] = {d.name: d for d in (CONTACTS, EVENTS, TRANSACTIONS, ERASURE_REQUESTS)}


def contract_markdown(dataset: Dataset) -> str:
    """The dataset's contract as a Markdown table (docs/extracts.md embeds it; a test keeps them in sync)."""
    rows = [
        f"| `{c.name}` | {c.sql_type.lower()} | {'required' if c.required else 'optional'} | {c.description} |"
        for c in dataset.columns
    ]
    return "\n".join(["| column | type | | meaning |", "|---|---|---|---|", *rows])
