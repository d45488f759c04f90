"""Synthetic source data: a CRM database, daily analytics JSON-lines files and daily transaction CSVs.

The simulation is vectorised over users and loops over days. Each user belongs to one of five planted
personas (demographics + behaviour). Purchases follow a churn process whose hazard depends on observed
behaviour: the probability of *no* completed purchase in the next H days is

    p = sigmoid(base[persona] + 0.025 * recency_days - 0.6 * log1p(recent_purchases)
                - 0.3 * log1p(recent_email_clicks))

and the daily purchase probability is 1 - p ** (1 / H), so p holds exactly over a frozen H-day window.
Ground truth (persona, p at the last day, and the outcome drawn beyond the window) goes to
``ground_truth.parquet``; the pipeline never reads it.
"""

from __future__ import annotations

import json
import queue
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from segflow.core.dbt import currency_rates

DEFAULT_END_DATE = date(2026, 9, 30)
CURRENCY_BY_COUNTRY = {
    "DE": "EUR",
    "FR": "EUR",
    "ES": "EUR",
    "IT": "EUR",
    "NL": "EUR",
    "GB": "GBP",
    "US": "USD",
    "CH": "CHF",
    "SE": "SEK",
}
# Local-currency units per EUR, from the dbt seed the pipeline converts with.
RATES_PER_EUR = currency_rates()
COUNTRIES = np.array(list(CURRENCY_BY_COUNTRY))
CITIES = {
    "DE": ["Berlin", "Hamburg", "Munich"],
    "FR": ["Paris", "Lyon"],
    "ES": ["Madrid", "Barcelona"],
    "IT": ["Rome", "Milan"],
    "NL": ["Amsterdam", "Utrecht"],
    "GB": ["London", "Manchester"],
    "US": ["New York", "Chicago", "Austin"],
    "CH": ["Zurich"],
    "SE": ["Stockholm"],
}
INCOME_BANDS = np.array(["<25k", "25-50k", "50-100k", "100k+"])
DEVICES = np.array(["mobile", "desktop", "tablet"])
CHANNELS = np.array(["email", "organic", "paid_search", "social", "direct"])
CATEGORIES = np.array(["electronics", "fashion", "home", "beauty", "sports", "books", "toys", "grocery"])
BROWSE_EVENTS = np.array(
    [
        "page_view",
        "product_view",
        "search",
        "add_to_cart",
        "begin_checkout",
        "wishlist_add",
        "email_open",
        "email_click",
        "login",
    ]
)
EVENT_TYPES = np.append(BROWSE_EVENTS, "purchase")
PURCHASE_CODE = len(BROWSE_EVENTS)
ENGAGEMENT_FLOOR = 0.6  # share of browsing a long-lapsed user keeps
TRACKING_CONSENT_SHARE = 0.85  # users who allow behavioural tracking (the others send no analytics events)
EMAIL_CLICK_CODE = int(np.flatnonzero(EVENT_TYPES == "email_click")[0])
LOGGED_IN_CODES = [int(np.flatnonzero(t == EVENT_TYPES)[0]) for t in ("login", "purchase", "email_open", "email_click")]
NO_CATEGORY_CODES = [int(np.flatnonzero(t == EVENT_TYPES)[0]) for t in ("page_view", "login", "email_open")]
FUTURE_TS = int(datetime(2099, 1, 1, tzinfo=UTC).timestamp())
FIRST_NAMES = np.array(
    [
        "Anna",
        "Ben",
        "Clara",
        "David",
        "Emma",
        "Felix",
        "Greta",
        "Hugo",
        "Ida",
        "Jonas",
        "Lea",
        "Max",
        "Nora",
        "Oskar",
        "Paula",
        "Ravi",
        "Sofia",
        "Tom",
        "Uma",
        "Yara",
    ]
)
LAST_NAMES = np.array(
    [
        "Muller",
        "Schmidt",
        "Martin",
        "Garcia",
        "Rossi",
        "Smith",
        "Jansen",
        "Berg",
        "Novak",
        "Silva",
        "Kowalski",
        "Dubois",
        "Brown",
        "Larsen",
    ]
)
DOMAINS = np.array(["example.com", "mail.example", "inbox.example", "post.example"])


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    age_mean: float
    age_sd: float
    income_p: tuple  # over INCOME_BANDS
    device_p: tuple  # over DEVICES
    channel_p: tuple  # over CHANNELS
    category_p: tuple  # over CATEGORIES
    browse_p: tuple  # over BROWSE_EVENTS
    event_rate: float  # browse events per active day at full engagement
    churn_base: float  # logit of P(no purchase in H days) for a fresh buyer
    amount_mu: float  # lognormal order value (EUR)
    amount_sigma: float
    signup_in_window: float  # share of users who sign up during the window
    email_consent: float


PERSONAS = [
    Persona(
        "bargain_hunter",
        0.25,
        30,
        4,
        (0.45, 0.4, 0.13, 0.02),
        (0.8, 0.12, 0.08),
        (0.1, 0.2, 0.3, 0.35, 0.05),
        (0.1, 0.35, 0.1, 0.2, 0.05, 0.05, 0.05, 0.1),
        (0.3, 0.3, 0.25, 0.08, 0.03, 0.02, 0.005, 0.005, 0.01),
        0.22,
        -4.0,
        3.0,
        0.4,
        0.0,
        0.6,
    ),
    Persona(
        "premium_loyalist",
        0.15,
        56,
        6,
        (0.02, 0.1, 0.38, 0.5),
        (0.15, 0.75, 0.1),
        (0.5, 0.15, 0.05, 0.05, 0.25),
        (0.35, 0.1, 0.3, 0.05, 0.05, 0.1, 0.02, 0.03),
        (0.2, 0.3, 0.05, 0.1, 0.05, 0.03, 0.15, 0.1, 0.02),
        0.35,
        -4.5,
        5.0,
        0.5,
        0.0,
        0.9,
    ),
    Persona(
        "window_shopper",
        0.25,
        40,
        4,
        (0.2, 0.45, 0.3, 0.05),
        (0.55, 0.3, 0.15),
        (0.05, 0.35, 0.2, 0.3, 0.1),
        (0.15, 0.3, 0.15, 0.15, 0.1, 0.05, 0.05, 0.05),
        (0.3, 0.35, 0.1, 0.12, 0.04, 0.07, 0.01, 0.005, 0.005),
        1.0,
        0.5,
        3.6,
        0.5,
        0.0,
        0.5,
    ),
    Persona(
        "dormant",
        0.15,
        46,
        10,
        (0.25, 0.35, 0.3, 0.1),
        (0.4, 0.5, 0.1),
        (0.2, 0.3, 0.1, 0.1, 0.3),
        (0.1, 0.1, 0.3, 0.05, 0.05, 0.1, 0.05, 0.25),
        (0.5, 0.2, 0.1, 0.02, 0.01, 0.01, 0.1, 0.01, 0.05),
        0.01,
        2.5,
        3.5,
        0.6,
        0.0,
        0.4,
    ),
    Persona(
        "new_explorer",
        0.20,
        22,
        3,
        (0.5, 0.35, 0.13, 0.02),
        (0.7, 0.2, 0.1),
        (0.1, 0.25, 0.15, 0.4, 0.1),
        (0.2, 0.25, 0.05, 0.25, 0.15, 0.02, 0.03, 0.05),
        (0.25, 0.3, 0.15, 0.08, 0.03, 0.04, 0.05, 0.05, 0.05),
        0.1,
        -1.5,
        3.3,
        0.5,
        1.0,
        0.7,
    ),
]
PERSONA_NAMES = np.array([p.name for p in PERSONAS])


def _cum(rows) -> np.ndarray:
    arr = np.asarray(rows, dtype=float)
    arr = arr / arr.sum(axis=1, keepdims=True)
    out = np.cumsum(arr, axis=1)
    out[:, -1] = 1.0 + 1e-9
    return out


def _pick(rng: np.random.Generator, cum_by_persona: np.ndarray, persona: np.ndarray) -> np.ndarray:
    """Vectorised categorical draw: one category index per row, from the row's persona distribution."""
    u = rng.random(len(persona))
    return (u[:, None] > cum_by_persona[persona]).sum(axis=1)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def no_purchase_probability(base, recency_days, recent_purchases, recent_clicks):
    """True P(no completed purchase in the next H days) given observed behaviour (see module doc)."""
    return sigmoid(
        base + 0.025 * np.minimum(recency_days, 365) - 0.6 * np.log1p(recent_purchases) - 0.3 * np.log1p(recent_clicks)
    )


@dataclass
class GenerateResult:
    out_dir: Path
    users: int
    contacts_rows: int
    events: int
    orders: int
    start_date: date
    end_date: date


def generate(
    out: str | Path,
    users: int = 10_000,
    days: int = 180,
    seed: int = 42,
    dirty_rate: float = 0.0,
    end_date: date = DEFAULT_END_DATE,
    horizon_days: int = 90,
    crm_url: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    event_scale: float = 1.0,
    purchase_scale: float = 1.0,
) -> GenerateResult:
    """`event_scale` multiplies every user's browsing rate; `purchase_scale` s makes the daily purchase
    probability 1 - p ** (s / H), so P(no purchase in H days) is p ** s and the ground truth follows it (the
    benchmark uses both to reach its data volumes per user)."""
    if users < 1 or days < 1:
        raise ValueError("users and days must be positive")
    if event_scale <= 0 or purchase_scale <= 0:
        raise ValueError("event_scale and purchase_scale must be positive")
    if not 0.0 <= dirty_rate <= 0.5:
        raise ValueError("dirty_rate must be within [0, 0.5]")
    rng = np.random.default_rng(seed)
    out = Path(out)
    start_date = end_date - timedelta(days=days - 1)
    for sub in ("events", "transactions"):
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True, exist_ok=True)

    n = users
    shares = np.array([p.share for p in PERSONAS])
    persona = rng.choice(len(PERSONAS), size=n, p=shares / shares.sum())
    base = np.array([p.churn_base for p in PERSONAS])[persona] + rng.normal(0, 0.3, n)
    event_rate = np.array([p.event_rate for p in PERSONAS])[persona] * rng.lognormal(0, 0.3, n) * event_scale
    # Signup day relative to window start (negative: before the window).
    in_window = rng.random(n) < np.array([p.signup_in_window for p in PERSONAS])[persona]
    signup = np.where(in_window, rng.integers(0, days, n), -rng.integers(1, 3 * 365, n))
    cum_device = _cum([p.device_p for p in PERSONAS])
    cum_channel = _cum([p.channel_p for p in PERSONAS])
    cum_category = _cum([p.category_p for p in PERSONAS])
    cum_browse = _cum([p.browse_p for p in PERSONAS])
    fav_device = _pick(rng, cum_device, persona)
    country_idx_all = _country_idx(persona, seed)
    currency_all = np.array([CURRENCY_BY_COUNTRY[c] for c in COUNTRIES])[country_idx_all]
    amount_mu = np.array([p.amount_mu for p in PERSONAS])[persona]
    amount_sigma = np.array([p.amount_sigma for p in PERSONAS])[persona]
    rate_all = np.array([RATES_PER_EUR[c] for c in currency_all])

    # State of the churn process, observable from the data the user generates.
    days_since_purchase = np.where(signup < 0, rng.integers(0, 120, n), 0).astype(float)
    recent_purchases = np.where(signup < 0, rng.poisson(np.maximum(0.5, 2 - base / 2)), 0).astype(float)
    recent_clicks = np.zeros(n)
    purchase_decay, click_decay = np.exp(-1 / 90), np.exp(-1 / 30)

    contact_ids = np.char.add("C", np.char.zfill(np.arange(1, n + 1).astype(str), 7))
    emails = _emails(rng, n)
    # Tracking consent (its own random stream): without it the site's tracker never runs, so the analytics files
    # hold none of the user's events - though the user still browses, and that behaviour still drives purchases.
    tracking_consent = np.random.default_rng([seed, 7]).random(n) < TRACKING_CONSENT_SHARE
    event_counter = 0
    order_counter = 0
    day0 = datetime.combine(start_date, datetime.min.time())
    writer = _DayWriter(out)  # writes day d's files while day d+1 is simulated
    for d in range(days):
        day = start_date + timedelta(days=d)
        active = signup <= d
        # Engagement fades as the user drifts away (recency), which is what makes churn visible in events.
        engagement = ENGAGEMENT_FLOOR + (1 - ENGAGEMENT_FLOOR) * np.exp(-days_since_purchase / 45)
        counts = rng.poisson(event_rate * engagement * active)
        p_none = no_purchase_probability(base, days_since_purchase, recent_purchases, recent_clicks)
        q = 1 - p_none ** (purchase_scale / horizon_days)
        buys = active & (rng.random(n) < q)

        # Orders of the day.
        buyer = np.flatnonzero(buys)
        m = len(buyer)
        status = rng.choice(np.array(["completed", "refunded", "cancelled"]), size=m, p=[0.92, 0.05, 0.03])
        amount_eur = rng.lognormal(amount_mu[buyer], amount_sigma[buyer])
        currency = currency_all[buyer]
        amount = np.round(amount_eur * rate_all[buyer], 2)
        ref_is_email = rng.random(m) < 0.2
        customer_ref = np.where(ref_is_email, emails[buyer], contact_ids[buyer]) if m else np.array([], dtype=str)
        order_cat = _pick(rng, cum_category, persona[buyer])
        order_secs = rng.integers(0, 86400, m)
        orders = pd.DataFrame(
            {
                "order_id": [f"O{order_counter + i:09d}" for i in range(m)],
                "customer_ref": customer_ref,
                "order_ts": pd.to_datetime(day0 + timedelta(days=d)) + pd.to_timedelta(order_secs, unit="s"),
                "amount": amount,
                "currency": currency,
                "status": status,
                "category": CATEGORIES[order_cat],
                "item_count": 1 + rng.poisson(1.2, m),
            }
        )
        order_counter += m
        completed = buyer[status == "completed"]

        # Browse events, then one purchase event per order (same timestamp, same category). Columns stay
        # integer codes and become dictionary-encoded Arrow columns: no per-row Python strings.
        ev_user = np.repeat(np.arange(n, dtype=np.int32), counts)
        ev_type = np.concatenate([_pick(rng, cum_browse, persona[ev_user]), np.full(m, PURCHASE_CODE)])
        ev_cat = np.concatenate([_pick(rng, cum_category, persona[ev_user]), order_cat])
        ev_secs = np.concatenate([_session_times(rng, counts), order_secs])
        ev_user = np.concatenate([ev_user, buyer.astype(np.int32)])
        e = len(ev_user)
        device_idx = np.where(rng.random(e) < 0.8, fav_device[ev_user], rng.integers(0, 3, e))
        # Before login on a device the analytics tool only knows the anonymous id.
        logged_in = np.isin(ev_type, LOGGED_IN_CODES) | (rng.random(e) < 0.6)
        ev_ts = int((day0 + timedelta(days=d)).replace(tzinfo=UTC).timestamp()) + ev_secs
        type_missing = np.zeros(e, dtype=bool)
        if dirty_rate:
            ev_ts = np.where(rng.random(e) < dirty_rate / 2, FUTURE_TS, ev_ts)
            type_missing = rng.random(e) < dirty_rate / 2
            orders = _dirty_orders(rng, orders, dirty_rate)
        events = pa.table(
            {
                "event_id": pa.array(np.arange(event_counter, event_counter + e)),
                "contact_idx": pa.array(ev_user),
                "logged_in": pa.array(logged_in),
                "session": pa.array(ev_secs // 1800),
                "event_ts": pa.array(ev_ts.astype("datetime64[s]")),
                "event_type": _dictionary(ev_type, EVENT_TYPES, type_missing),
                "product_category": _dictionary(ev_cat, CATEGORIES, np.isin(ev_type, NO_CATEGORY_CODES)),
                "device": _dictionary(device_idx, DEVICES),
                "channel": _dictionary(_pick(rng, cum_channel, persona[ev_user]), CHANNELS),
            }
        ).filter(pa.array(tracking_consent[ev_user]))
        event_counter += e
        writer.submit(day, orders, events)

        # Advance the observable state.
        clicks_today = np.bincount(ev_user[ev_type == EMAIL_CLICK_CODE], minlength=n)
        recent_clicks = recent_clicks * click_decay + clicks_today
        recent_purchases = recent_purchases * purchase_decay
        np.add.at(recent_purchases, completed, 1.0)
        days_since_purchase = np.where(active, days_since_purchase + 1, days_since_purchase)
        days_since_purchase[completed] = 0
        if progress:
            progress("days", d + 1, days)
    writer.close()

    # Ground truth beyond the window: the same process, state frozen at the last day.
    p_end = no_purchase_probability(base, days_since_purchase, recent_purchases, recent_clicks) ** purchase_scale
    churned = rng.random(n) < p_end
    pd.DataFrame(
        {"contact_id": contact_ids, "persona": PERSONA_NAMES[persona], "churn_probability": p_end, "churned": churned}
    ).to_parquet(out / "ground_truth.parquet", index=False)

    contacts = _contacts(rng, n, persona, signup, start_date, end_date, contact_ids, emails, fav_device, seed)
    contacts["consent_tracking"] = tracking_consent
    if dirty_rate:
        contacts = _dirty_contacts(rng, contacts, dirty_rate, end_date)
    url = crm_url or f"sqlite:///{(out / 'crm.sqlite').resolve()}"
    write_contacts(contacts, url)
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "users": n,
                "days": days,
                "seed": seed,
                "dirty_rate": dirty_rate,
                "start_date": start_date.isoformat(),
                "end_date": end_date.isoformat(),
                "horizon_days": horizon_days,
                "crm_url": url if crm_url else "crm.sqlite",
                "event_scale": event_scale,
                "purchase_scale": purchase_scale,
                "events": event_counter,
                "orders": order_counter,
                "personas": list(PERSONA_NAMES),
            },
            indent=2,
        )
    )
    return GenerateResult(out, n, len(contacts), event_counter, order_counter, start_date, end_date)


SESSION_GAP_SECONDS = 90.0  # mean time between a visitor's consecutive events within a visit


def _session_times(rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
    """Seconds into the day of each user's browse events (users in order, `counts` each): one visit per user and
    day starting at a random time, events a random ~90 s apart - as people browse, so behaviour within minutes
    (real-time triggers: high intent, abandoned carts and browsing) shows as it would on a real site."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts  # index of each user's first event
    gaps = rng.exponential(SESSION_GAP_SECONDS, total)
    elapsed = np.cumsum(gaps)
    offsets = (elapsed - np.repeat(elapsed[np.minimum(starts, total - 1)], counts)).astype(np.int64)
    # The visit starts at a random time at which it ends within the day (no pile-up at midnight).
    span = np.zeros(len(counts), dtype=np.int64)
    has = counts > 0
    span[has] = offsets[starts[has] + counts[has] - 1]
    # A visit too long for one day is squeezed into it (its events keep their order).
    long = span > 86399
    if long.any():
        scale = np.repeat(np.where(long, 86399 / np.maximum(span, 1), 1.0), counts)
        offsets = (offsets * scale).astype(np.int64)
        span = np.minimum(span, 86399)
    user_start = (rng.random(len(counts)) * np.maximum(86400 - span, 1)).astype(np.int64)
    return np.minimum(np.repeat(user_start, counts) + offsets, 86399)


def _country_idx(persona: np.ndarray, seed: int) -> np.ndarray:
    # Stable per user: derived from a dedicated stream so orders and CRM agree.
    rng = np.random.default_rng(seed + 7)
    weights = np.array([0.3, 0.12, 0.1, 0.08, 0.08, 0.12, 0.12, 0.04, 0.04])
    return rng.choice(len(COUNTRIES), size=len(persona), p=weights / weights.sum())


def _emails(rng: np.random.Generator, n: int) -> np.ndarray:
    first = np.char.lower(FIRST_NAMES[np.arange(n) % len(FIRST_NAMES)])
    last = np.char.lower(LAST_NAMES[(np.arange(n) // len(FIRST_NAMES)) % len(LAST_NAMES)])
    local = np.char.add(np.char.add(np.char.add(first, "."), last), np.arange(1, n + 1).astype(str))
    return np.char.add(np.char.add(local, "@"), DOMAINS[rng.integers(0, len(DOMAINS), n)])


def _contacts(rng, n, persona, signup, start_date, end_date, contact_ids, emails, fav_device, seed) -> pd.DataFrame:
    ages = np.clip(
        rng.normal(np.array([p.age_mean for p in PERSONAS])[persona], np.array([p.age_sd for p in PERSONAS])[persona]),
        18,
        90,
    )
    birth = pd.Timestamp(end_date) - pd.to_timedelta((ages * 365.25).astype(int), unit="D")
    created = (
        pd.Timestamp(start_date)
        + pd.to_timedelta(signup, unit="D")
        + pd.to_timedelta(rng.integers(0, 86400, n), unit="s")
    )
    span = (pd.Timestamp(end_date) - created).days.to_numpy().clip(min=0)
    updated = created + pd.to_timedelta((rng.random(n) * span).astype(int), unit="D")
    country = COUNTRIES[_country_idx(persona, seed)]
    city = np.array([CITIES[c][i % len(CITIES[c])] for i, c in enumerate(country)])
    cum_income = _cum([p.income_p for p in PERSONAS])
    cum_category = _cum([p.category_p for p in PERSONAS])
    interests = [
        ",".join(sorted({CATEGORIES[a], CATEGORIES[b]}))
        for a, b in zip(_pick(rng, cum_category, persona), _pick(rng, cum_category, persona), strict=True)
    ]
    first = FIRST_NAMES[np.arange(n) % len(FIRST_NAMES)]
    last = LAST_NAMES[(np.arange(n) // len(FIRST_NAMES)) % len(LAST_NAMES)]
    return pd.DataFrame(
        {
            "contact_id": contact_ids,
            "created_at": created,
            "updated_at": updated,
            "email": emails,
            "phone": np.char.add("+49 15", np.char.zfill(rng.integers(0, 10**8, n).astype(str), 8)),
            "first_name": first,
            "last_name": last,
            "birth_date": birth.date,
            "gender": rng.choice(np.array(["female", "male", "diverse"]), n, p=[0.49, 0.49, 0.02]),
            "country": country,
            "city": city,
            "income_band": INCOME_BANDS[_pick(rng, cum_income, persona)],
            "consent_email_marketing": rng.random(n) < np.array([p.email_consent for p in PERSONAS])[persona],
            "consent_tracking": rng.random(n) < TRACKING_CONSENT_SHARE,  # replaced by the generator's own draw
            "preferred_channel": CHANNELS[_pick(rng, _cum([p.channel_p for p in PERSONAS]), persona)],
            "interests": interests,
        }
    )


def _dirty_contacts(rng, contacts: pd.DataFrame, rate: float, end_date: date) -> pd.DataFrame:
    """Defects real CRMs have: malformed emails, case/whitespace duplicates, impossible ages, missing values."""
    c = contacts.copy()
    n = len(c)
    k = max(1, int(n * rate))
    bad_email = rng.choice(n, k, replace=False)
    c.loc[bad_email, "email"] = c.loc[bad_email, "email"].str.replace("@", " at ", regex=False)
    impossible = rng.choice(n, k, replace=False)
    c.loc[impossible[: k // 2], "birth_date"] = date(1850, 1, 1)
    c.loc[impossible[k // 2 :], "birth_date"] = end_date + timedelta(days=400)
    for col in ("country", "income_band", "gender"):
        missing = rng.choice(n, k, replace=False)
        c.loc[missing, col] = None
    dup_src = rng.choice(n, k, replace=False)
    dups = c.loc[dup_src].copy()
    dups["contact_id"] = np.char.add("C", np.char.zfill(np.arange(n + 1, n + k + 1).astype(str), 7))
    dups["email"] = "  " + dups["email"].str.upper() + " "
    dups["updated_at"] = dups["updated_at"] + pd.Timedelta(hours=1)
    return pd.concat([c, dups], ignore_index=True)


def _dirty_orders(rng, orders: pd.DataFrame, rate: float) -> pd.DataFrame:
    """Per-day order defects: negative amounts, unknown currencies and customers, future timestamps, missing amounts."""
    o = orders.copy()
    m = len(o)
    if not m:
        return o
    o["amount"] = o["amount"].astype(object)
    for defect in ("negative", "currency", "unknown_customer", "future", "missing"):
        hit = rng.random(m) < rate / 5
        if defect == "negative":
            o.loc[hit, "amount"] = -o.loc[hit, "amount"]
        elif defect == "currency":
            o.loc[hit, "currency"] = "XYZ"
        elif defect == "unknown_customer":
            o.loc[hit, "customer_ref"] = (
                "C9" + pd.Series(rng.integers(0, 10**6, hit.sum())).astype(str).str.zfill(6).to_numpy()
            )
        elif defect == "future":
            o.loc[hit, "order_ts"] = pd.Timestamp("2099-01-01")
        else:
            o.loc[hit, "amount"] = None
    return o


def _dictionary(codes: np.ndarray, values: np.ndarray, null_mask: np.ndarray | None = None) -> pa.DictionaryArray:
    indices = pa.array(codes.astype(np.int8), mask=null_mask)
    return pa.DictionaryArray.from_arrays(indices, pa.array(values.tolist()))


class _DayWriter:
    """One background thread formats the daily files (DuckDB releases the GIL while writing); the bounded
    queue keeps at most two days in memory. Errors surface on the next submit or on close."""

    def __init__(self, out: Path):
        import duckdb

        self.out = out
        self.con = duckdb.connect()
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="segflow-day-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    _write_day(self.con, self.out, *item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the generating thread
                    self.error = exc

    def submit(self, day: date, orders: pd.DataFrame, events) -> None:
        if self.error:
            raise self.error
        self.queue.put((day, orders, events))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.con.close()
        if self.error:
            raise self.error


def _write_day(con, out: Path, day: date, orders: pd.DataFrame, events) -> None:
    """Format one day's files with DuckDB (fast CSV/JSON writers; ids hashed in SQL)."""
    con.register("orders_df", orders)
    con.register("events_df", events)
    try:
        con.execute(f"""COPY (SELECT order_id, customer_ref, strftime(order_ts, '%Y-%m-%dT%H:%M:%S') AS order_ts, amount, currency,
                status, category, item_count FROM orders_df) TO '{out / "transactions" / f"{day.isoformat()}.csv"}' (HEADER, DELIMITER ',')""")
        con.execute(f"""COPY (SELECT 'ev' || e.event_id::VARCHAR AS event_id,
                'anon-' || md5(e.contact_id || e.device)[:16] AS anonymous_id,
                CASE WHEN e.logged_in THEN e.contact_id END AS user_id,
                md5(e.contact_id || '{day}' || e.session::VARCHAR)[:20] AS session_id,
                strftime(e.event_ts::TIMESTAMP, '%Y-%m-%dT%H:%M:%SZ') AS event_ts, e.event_type, e.product_category, e.device,
                e.channel, CASE WHEN e.channel IN ('paid_search', 'social', 'email') THEN e.channel || '_campaign' END AS utm_source
                FROM (SELECT *, 'C' || lpad((contact_idx + 1)::VARCHAR, 7, '0') AS contact_id FROM events_df) e ORDER BY e.event_ts) TO '{out / "events" / f"{day.isoformat()}.jsonl"}' (FORMAT json)""")
    finally:
        con.unregister("orders_df")
        con.unregister("events_df")


def write_contacts(contacts: pd.DataFrame, url: str, table: str = "contacts") -> None:
    """Write the CRM table. Any SQLAlchemy URL works (PostgreSQL is tested); SQLite files are written
    through the driver directly, which is ~10x faster than SQLAlchemy for a million rows."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as con:
            # The generator owns this CRM: start empty so re-generation is deterministic.
            con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute("DROP TABLE IF EXISTS crm_segments")
            frame = contacts.copy()
            for col in ("created_at", "updated_at"):
                frame[col] = frame[col].dt.strftime("%Y-%m-%d %H:%M:%S")
            frame["birth_date"] = frame["birth_date"].astype(str).where(frame["birth_date"].notna(), None)
            frame.to_sql(table, con, index=False, chunksize=100_000)
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS crm_segments"))
        contacts.to_sql(table, engine, if_exists="replace", index=False, chunksize=20_000, method="multi")
    finally:
        engine.dispose()
