"""PII hashing and its salt.

Clear-text email and phone exist only in `raw` and `staging`. Everything downstream matches people on a salted
SHA-256 of the normalised value (lower-cased, trimmed), computed when a row is loaded, with the salt bound as a
query parameter: it appears in no SQL text, no dbt artefact (compiled SQL, view definitions, partial-parse state)
and no log. The salt comes from SEGFLOW_PII_SALT only. A development salt is used - with a warning - only when
every source is generated data (segflow generate); real data without SEGFLOW_PII_SALT is refused, and so is a salt
other than the one a warehouse's hashes were made with (hashes would stop matching silently).
"""

from __future__ import annotations

import hashlib
import os

SALT_ENV = "SEGFLOW_PII_SALT"
DEV_SALT = "segflow-dev-salt"


class PrivacyError(RuntimeError):
    """PII cannot be processed safely with the current settings."""


def pii_salt(generated_only: bool, environ=None) -> tuple[str, str | None]:
    """(salt, warning or None)."""
    environ = os.environ if environ is None else environ
    salt = environ.get(SALT_ENV)
    if salt:
        return salt, None
    if generated_only:
        return DEV_SALT, f"{SALT_ENV} is not set: using the development salt, acceptable for generated data only"
    raise PrivacyError(
        f"{SALT_ENV} is not set: real personal data is hashed with a secret salt; set it in the environment "
        "(or an Airflow variable exported to it) before loading"
    )


def salt_fingerprint(salt: str) -> str:
    """What the warehouse remembers of its salt: a one-way fingerprint (never the salt)."""
    return hashlib.sha256(b"segflow salt fingerprint\x00" + salt.encode()).hexdigest()[:16]


def pii_hash(value: str | None, salt: str) -> str | None:
    """The salted hash of a normalised identifier, as the extract computes it in SQL."""
    if value is None or not value.strip():
        return None
    return hashlib.sha256((salt + value.strip().lower()).encode()).hexdigest()
