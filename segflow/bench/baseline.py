"""The benchmark's baseline: user_features written in plain pandas, as a data scientist would without dbt.

It starts where the SQL feature model (int_users_featurised) starts: the point-in-time, identity-resolved
inputs - attributed events and orders, the contacts as of the date, the set of users - exported once by
`export_inputs` (dbt compiles those ephemeral models; the export is not part of the baseline's time). The
baseline reads them from Parquet and computes every column of user_features; `compare_with_dbt` checks that
the result equals what dbt published. This is benchmark code only: the pipeline computes features in dbt.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from segflow.core.config import Settings
from segflow.core.resources import DBT_PROJECT_DIR

# ephemeral model -> file name of its export
INPUT_MODELS = {
    "int_events_attributed": "events",
    "int_orders_attributed": "orders",
    "int_order_lines_attributed": "lines",
    "int_contacts_versioned_as_of": "contacts",
    "int_identities_resolved": "identities",
}
ENGAGEMENT_TYPES = ("product_view", "add_to_cart", "purchase", "wishlist_add")


def export_inputs(settings: Settings, as_of: str, out_dir: Path) -> dict[str, Any]:
    """Write the feature model's inputs as of `as_of` to Parquet, from the SQL dbt compiles for them."""
    from segflow.core.dbt import dbt_vars, run_dbt
    from segflow.core.warehouse import connect

    out_dir.mkdir(parents=True, exist_ok=True)
    result = run_dbt(settings, ["compile", "--select", *INPUT_MODELS], vars=dbt_vars(as_of, settings))
    compiled = {r.node.name: r.node.compiled_code for r in result.results}
    rows = {}
    with connect(settings.warehouse_path, read_only=True) as con:
        for model, name in INPUT_MODELS.items():
            con.execute(f"COPY ({compiled[model]}) TO '{out_dir / f'{name}.parquet'}' (FORMAT parquet)")
            rows[name] = con.execute(f"SELECT count(*) FROM '{out_dir / f'{name}.parquet'}'").fetchone()[0]
        has_events = con.execute("SELECT count(*) > 0 FROM raw.sources WHERE dataset = 'events'").fetchone()[0]
    (out_dir / "datasets.json").write_text(json.dumps({"has_events": bool(has_events)}))
    return {"rows": sum(rows.values()), "inputs": rows}


def read_inputs(in_dir: Path) -> dict[str, Any]:
    inputs: dict[str, Any] = {name: pd.read_parquet(in_dir / f"{name}.parquet") for name in INPUT_MODELS.values()}
    inputs["has_events"] = json.loads((in_dir / "datasets.json").read_text())["has_events"]
    return inputs


def intent_weights() -> dict[str, float]:
    """The intent weights the dbt model uses (dbt_project.yml vars)."""
    project = yaml.safe_load((DBT_PROJECT_DIR / "dbt_project.yml").read_text())
    return {k: float(v) for k, v in project["vars"]["intent_weights"].items()}


def round_half_away(values: pd.Series | np.ndarray, places: int) -> np.ndarray:
    """SQL's round(): halves away from zero (numpy rounds them to even)."""
    x = np.asarray(values, dtype="float64")
    factor = 10.0**places
    return np.sign(x) * np.floor(np.abs(x) * factor + 0.5) / factor


def completed_years(birth: pd.Series, as_of: date) -> pd.Series:
    """Whole years from birth to as_of (the age), like date_sub('year', birth, as_of)."""
    b = pd.to_datetime(birth)
    years = as_of.year - b.dt.year
    before_birthday = (b.dt.month > as_of.month) | ((b.dt.month == as_of.month) & (b.dt.day > as_of.day))
    return (years - before_birthday.astype("Int64")).astype("Int64")


def ntile(order_frame: pd.DataFrame, by: list[str], ascending: list[bool], buckets: int = 5) -> pd.Series:
    """SQL ntile(buckets) over (order by `by`): as-equal-as-possible groups, the first ones one row larger."""
    ordered = order_frame.sort_values(by, ascending=ascending, kind="mergesort")
    n = len(ordered)
    size, extra = divmod(n, buckets)
    position = np.arange(n)
    # rows [0, extra*(size+1)) fill the larger buckets first
    large = extra * (size + 1)
    tile = np.where(position < large, position // max(size + 1, 1), extra + (position - large) // max(size, 1)) + 1
    return pd.Series(tile, index=ordered.index).reindex(order_frame.index)


def _top(counts: pd.DataFrame, key: str, value: str, count: str = "n") -> pd.DataFrame:
    """Per user, the `value` with the highest count; ties go to the alphabetically first value."""
    ranked = counts.sort_values([key, count, value], ascending=[True, False, True], kind="mergesort")
    return ranked.drop_duplicates(key, keep="first")


def user_features_pandas(inputs: dict[str, Any], as_of: date) -> pd.DataFrame:
    day = pd.Timestamp(as_of)
    weights = intent_weights()
    identities, contacts = inputs["identities"], inputs["contacts"]
    orders = inputs["orders"][inputs["orders"]["status"] == "completed"]
    events = inputs["events"]
    has_events = inputs["has_events"]

    users = pd.DataFrame(
        {
            "user_id": identities.loc[
                identities["identifier_type"].isin(["crm_contact_id", "transaction_customer_ref"]), "user_id"
            ]
            .drop_duplicates()
            .to_numpy()
        }
    )
    contacts = contacts[contacts["contact_id"] == contacts["user_id"]]

    order_date = pd.to_datetime(orders["order_date"])
    o = orders.assign(
        order_date=order_date,
        in_365=order_date > day - pd.Timedelta(days=365),
        in_180=order_date > day - pd.Timedelta(days=180),
        in_30=order_date > day - pd.Timedelta(days=30),
        in_90=order_date > day - pd.Timedelta(days=90),
    )
    o["amount_365"] = o["amount_reporting"].where(o["in_365"], 0.0)
    o["amount_90"] = o["amount_reporting"].where(o["in_90"], 0.0)
    order_stats = (
        o.groupby("user_id")
        .agg(
            last_purchase_date=("order_date", "max"),
            first_purchase_date=("order_date", "min"),
            lifetime_orders=("order_id", "size"),
            lifetime_spend=("amount_reporting", "sum"),
            frequency_365d=("in_365", "sum"),
            monetary_365d=("amount_365", "sum"),
            orders_180d=("in_180", "sum"),
            orders_30d=("in_30", "sum"),
            orders_90d=("in_90", "sum"),
            spend_90d=("amount_90", "sum"),
            avg_items_per_order=("item_count", "mean"),
            avg_lines_per_order=("line_count", "mean"),
        )
        .reset_index()
    )
    # Purchase days (several orders on one day are one purchase), their gaps and the repeat days' spend.
    days = (
        o.groupby(["user_id", "order_date"], as_index=False)["amount_reporting"]
        .sum()
        .sort_values(["user_id", "order_date"])
    )
    days["gap"] = days.groupby("user_id")["order_date"].diff().dt.days
    days["is_repeat"] = days.groupby("user_id").cumcount() > 0
    rhythm = days.groupby("user_id").agg(purchase_days=("order_date", "size"), last_gap=("gap", "last"))
    rhythm["repeat_purchase_value"] = days[days["is_repeat"]].groupby("user_id")["amount_reporting"].mean()
    days["in_365"] = days["order_date"] > day - pd.Timedelta(days=365)
    rhythm["purchase_days_365d"] = days.groupby("user_id")["in_365"].sum()
    ranked = o.sort_values(["user_id", "order_ts", "order_id"])
    third = ranked[ranked.groupby("user_id").cumcount() == 2].set_index("user_id")["order_date"]
    rhythm["third_purchase_date"] = third
    rhythm["last_order_lines"] = ranked.groupby("user_id")["line_count"].last()
    # Returns (cancelled and refunded orders within 365 days), of buyers only: they join the purchase summary.
    every_order = inputs["orders"]
    returned = every_order[
        every_order["status"].isin(["cancelled", "refunded"])
        & (pd.to_datetime(every_order["order_date"]) > day - pd.Timedelta(days=365))
    ]
    rhythm["returned_value_365d"] = returned["amount_reporting"].abs().groupby(returned["user_id"]).sum()
    order_stats = order_stats.merge(rhythm.reset_index(), how="left", on="user_id")
    # Days of the last 365 the data covers: from its first order (any customer, any status).
    first_order = pd.to_datetime(every_order["order_date"]).min()
    observed_days = min(365, (day - first_order).days + 1) if pd.notna(first_order) else np.nan

    # Products (lines with a product id of completed orders; a product on several lines of an order counts once).
    lines = inputs["lines"]
    bought = lines.loc[lines["status"] == "completed", ["user_id", "order_id", "order_date", "product_id"]]
    bought = bought.drop_duplicates().assign(order_date=lambda x: pd.to_datetime(x["order_date"]))
    recent = bought[bought["order_date"] > day - pd.Timedelta(days=90)]
    products = pd.DataFrame(
        {
            "buyers": bought.groupby("product_id")["user_id"].nunique(),
            "buyers_90d": recent.groupby("product_id")["user_id"].nunique(),
            "is_sold_30d": bought.groupby("product_id")["order_date"].max() > day - pd.Timedelta(days=30),
        }
    )
    products["buyers_90d"] = products["buyers_90d"].fillna(0)
    user_products = bought.groupby(["user_id", "product_id"]).size().rename("times_bought").reset_index()
    user_products = user_products.merge(products.reset_index(), on="product_id")
    user_products["log_buyers"] = np.log1p(user_products["buyers"].astype("float64"))
    user_products["sold_30d"] = user_products["is_sold_30d"].astype("float64")
    per_user = user_products.groupby("user_id")
    product_stats = pd.DataFrame(
        {
            "avg_product_buyers_90d": per_user["buyers_90d"].mean(),
            "avg_log_product_buyers": per_user["log_buyers"].mean(),
            "products_sold_30d_share": per_user["sold_30d"].mean(),
            "repeat_product_share": 1 - per_user.size() / per_user["times_bought"].sum(),
        }
    ).reset_index()

    event_date = pd.to_datetime(events["event_date"])
    e30 = events[event_date > day - pd.Timedelta(days=30)]
    e90 = events[event_date > day - pd.Timedelta(days=90)]
    point_weights = {k: v for k, v in weights.items() if k != "cart_abandonment"}
    e30 = e30.assign(
        is_open=e30["event_type"] == "email_open",
        is_click=e30["event_type"] == "email_click",
        is_view=e30["event_type"] == "page_view",
        points=e30["event_type"].map(point_weights).astype("float64").fillna(0.0),
        is_cart=e30["event_type"] == "add_to_cart",
        is_purchase=e30["event_type"] == "purchase",
    )
    grouped = e30.groupby("user_id")
    seen_at = pd.to_datetime(events.groupby("user_id")["event_date"].max())
    engagement = pd.DataFrame(
        {
            "last_activity_date": seen_at,
            "active_days_30d": grouped["event_date"].nunique(),
            "sessions_30d": grouped["session_id"].nunique(),
            "email_opens_30d": grouped["is_open"].sum(),
            "email_clicks_30d": grouped["is_click"].sum(),
            "page_views_7d": e30[pd.to_datetime(e30["event_date"]) > day - pd.Timedelta(days=7)]
            .groupby("user_id")["is_view"]
            .sum(),
            "event_intent_points": grouped["points"].sum(),
        }
    ).reset_index(names="user_id")
    sessions = e30.groupby(["user_id", "session_id"]).agg(cart=("is_cart", "any"), purchase=("is_purchase", "any"))
    abandoned = (sessions["cart"] & ~sessions["purchase"]).groupby(level="user_id").sum()
    abandonment = abandoned.rename("abandoned_sessions_30d").reset_index()

    category_activity = (
        e90[e90["product_category"].notna() & e90["event_type"].isin(ENGAGEMENT_TYPES)]
        .groupby(["user_id", "product_category"])
        .size()
        .rename("n")
        .reset_index()
    )
    category_activity["share"] = category_activity["n"] / category_activity.groupby("user_id")["n"].transform("sum")
    top_category = _top(category_activity, "user_id", "product_category").rename(
        columns={"product_category": "top_category", "share": "top_category_share"}
    )[["user_id", "top_category", "top_category_share"]]

    views = (
        e30[(e30["event_type"] == "product_view") & e30["product_category"].notna()]
        .groupby(["user_id", "product_category"])
        .size()
        .rename("views")
        .reset_index()
    )
    views = views[views["views"] > 3]
    bought_30d = o.loc[o["in_30"], ["user_id", "category"]].drop_duplicates()
    views = views.merge(
        bought_30d,
        how="left",
        left_on=["user_id", "product_category"],
        right_on=["user_id", "category"],
        indicator=True,
    )
    views = views[views["_merge"] == "left_only"]
    interest = _top(views, "user_id", "product_category", "views").rename(
        columns={"product_category": "interest_category", "views": "interest_category_views_30d"}
    )[["user_id", "interest_category", "interest_category_views_30d"]]

    channel = _top(
        e90[e90["channel"].notna()].groupby(["user_id", "channel"]).size().rename("n").reset_index(),
        "user_id",
        "channel",
    )[["user_id", "channel"]].rename(columns={"channel": "preferred_channel_observed"})
    device = _top(
        e90[e90["device"].notna()].groupby(["user_id", "device"]).size().rename("n").reset_index(), "user_id", "device"
    )[["user_id", "device"]].rename(columns={"device": "preferred_device"})

    f = users.merge(contacts, how="left", on="user_id")
    for frame in (order_stats, product_stats, engagement, abandonment, top_category, interest, channel, device):
        f = f.merge(frame, how="left", on="user_id")

    out = pd.DataFrame({"user_id": f["user_id"], "as_of": pd.Timestamp(as_of)})
    out["is_crm_contact"] = f["contact_id"].notna()
    age = completed_years(f["birth_date"], as_of)
    valid_age = age.between(16, 110)
    years = age.fillna(-1).to_numpy("int64")
    out["age_band"] = np.select(
        [~valid_age.fillna(False).to_numpy(bool), years < 25, years < 35, years < 45, years < 55, years < 65],
        ["Unknown", "16-24", "25-34", "35-44", "45-54", "55-64"],
        "65+",
    )
    out["age"] = age.where(valid_age.fillna(False))
    out["gender"] = f["gender"].fillna("unknown")
    out["country"] = f["country_code"].fillna("Unknown")
    out["income_band"] = f["income_band"].fillna("Unknown")
    out["interest_tags"] = f["interest_tags"]
    out["has_email_consent"] = f["has_email_consent"].fillna(False).astype(bool)
    out["has_tracking_consent"] = f["has_tracking_consent"].fillna(False).astype(bool)
    out["email_hash"] = f["email_hash"]
    out["email_sha256"] = f["email_sha256"]
    start = pd.to_datetime(f["created_at"]).dt.normalize().fillna(f["first_purchase_date"])
    out["tenure_days"] = (day - start).dt.days.astype("Int64")
    out["first_purchase_date"] = f["first_purchase_date"]
    out["last_purchase_date"] = f["last_purchase_date"]
    out["recency_days"] = (day - f["last_purchase_date"]).dt.days.astype("Int64")
    out["frequency_365d"] = f["frequency_365d"].fillna(0).astype("int64")
    out["monetary_365d"] = round_half_away(f["monetary_365d"].fillna(0.0), 2)
    out["lifetime_orders"] = f["lifetime_orders"].fillna(0).astype("int64")
    out["lifetime_spend"] = round_half_away(f["lifetime_spend"].fillna(0.0), 2)
    out["orders_30d"] = f["orders_30d"].fillna(0).astype("int64")
    out["orders_90d"] = f["orders_90d"].fillna(0).astype("int64")
    out["orders_180d"] = f["orders_180d"].fillna(0).astype("int64")
    out["spend_90d"] = round_half_away(f["spend_90d"].fillna(0.0), 2)
    out["purchase_days"] = f["purchase_days"].fillna(0).astype("int64")
    out["customer_age_days"] = (day - f["first_purchase_date"]).dt.days.astype("Int64")
    span = (f["last_purchase_date"] - f["first_purchase_date"]).dt.days
    out["days_first_to_last_purchase"] = span.astype("Int64")
    mean_gap = (span / (f["purchase_days"] - 1)).where(f["purchase_days"] > 1)
    out["mean_interpurchase_days"] = mean_gap
    out["last_interpurchase_days"] = f["last_gap"].astype("Int64")
    out["recency_ratio"] = (day - f["last_purchase_date"]).dt.days / mean_gap
    out["avg_order_value"] = f["lifetime_spend"] / f["lifetime_orders"]
    out["avg_items_per_order"] = f["avg_items_per_order"]
    out["avg_lines_per_order"] = f["avg_lines_per_order"]
    out["repeat_purchase_value"] = f["repeat_purchase_value"]
    out["third_purchase_date"] = f["third_purchase_date"]
    out["returned_value_365d"] = round_half_away(f["returned_value_365d"].fillna(0.0), 2)
    out["last_order_lines_ratio"] = f["last_order_lines"] / f["avg_lines_per_order"]
    out["purchase_day_rate_365d"] = f["purchase_days_365d"] / observed_days
    for column in (
        "avg_product_buyers_90d",
        "avg_log_product_buyers",
        "products_sold_30d_share",
        "repeat_product_share",
    ):
        out[column] = f[column]
    counts = {c: f[c].fillna(0) for c in ("active_days_30d", "sessions_30d", "email_opens_30d", "email_clicks_30d")}
    engagement_score = (
        30 * np.minimum(counts["active_days_30d"] / 10.0, 1)
        + 30 * np.minimum(counts["sessions_30d"] / 15.0, 1)
        + 20 * np.minimum(counts["email_opens_30d"] / 8.0, 1)
        + 20 * np.minimum(counts["email_clicks_30d"] / 4.0, 1)
    )
    abandoned_sessions = f["abandoned_sessions_30d"].fillna(0)
    intent = f["event_intent_points"].fillna(0.0) + weights.get("cart_abandonment", 0) * abandoned_sessions
    # Behaviour is used where events are collected and the person consented to tracking (as in dbt).
    tracked = out["has_tracking_consent"] if has_events else pd.Series(False, index=out.index)
    behaviour = {
        **{c: values.astype("Int64") for c, values in counts.items()},
        "engagement_score": pd.Series(round_half_away(engagement_score, 1), index=out.index),
        "intent_score_30d": pd.Series(round_half_away(intent, 1), index=out.index),
        "cart_abandoned_30d": (abandoned_sessions > 0).astype("boolean"),
        "top_category": f["top_category"].fillna("none"),
        "top_category_share": pd.Series(round_half_away(f["top_category_share"].fillna(0.0), 3), index=out.index),
    }
    behaviour["page_views_7d"] = f["page_views_7d"].fillna(0).astype("Int64")
    seen = pd.to_datetime(f["last_activity_date"])
    behaviour["days_since_last_activity"] = (day - seen).dt.days.astype("Int64")
    for c, values in behaviour.items():
        out[c] = values.where(tracked, None) if values.dtype == object else values.where(tracked)
    # The latest of the last used event and the last purchase; else since the contact was created.
    last_seen = pd.concat([seen.where(tracked), f["last_purchase_date"]], axis=1).max(axis=1)
    last_seen = last_seen.fillna(pd.to_datetime(f["created_at"]).dt.normalize())
    out["days_since_last_interaction"] = (day - last_seen).dt.days.astype("Int64")
    out["interest_category"] = f["interest_category"]
    out["interest_category_views_30d"] = f["interest_category_views_30d"].astype("Int64")
    out["preferred_channel"] = f["preferred_channel_observed"].fillna(f["crm_preferred_channel"]).fillna("unknown")
    out["preferred_device"] = f["preferred_device"].fillna("unknown")

    buyers = out[out["frequency_365d"] > 0]
    for column, by, ascending in (
        ("recency_score", ["recency_days", "user_id"], [False, True]),
        ("frequency_score", ["frequency_365d", "user_id"], [True, True]),
        ("monetary_score", ["monetary_365d", "user_id"], [True, True]),
    ):
        out[column] = ntile(buyers, by, ascending).reindex(out.index).astype("Int64")

    # Null scores (non-buyers) are caught by the first condition; -1 keeps the arrays plain booleans.
    r, fr = (out[c].fillna(-1).to_numpy("int64") for c in ("recency_score", "frequency_score"))
    out["rfm_label"] = np.select(
        [
            r < 0,
            (r >= 4) & (fr >= 4),
            (r >= 4) & (fr == 1),
            (r >= 3) & (fr >= 3),
            r >= 4,
            (r <= 2) & (fr >= 4),
            (r <= 2) & (fr >= 2),
            r <= 2,
        ],
        [
            "No recent purchases",
            "Champions",
            "Recent First-Timers",
            "Loyal",
            "Potential Loyalists",
            "Cannot Lose Them",
            "At Risk",
            "Hibernating",
        ],
        "Needs Attention",
    )
    recency = out["recency_days"].fillna(-1).to_numpy("int64")  # null only without orders: the first condition
    orders_total = out["lifetime_orders"].to_numpy()
    first_recent = (out["first_purchase_date"] > day - pd.Timedelta(days=30)).fillna(False).to_numpy(bool)
    out["lifecycle_stage"] = np.select(
        [
            orders_total == 0,
            recency > 90,
            recency > 45,
            (orders_total >= 3) & (recency <= 30),
            first_recent,
            orders_total >= 2,
        ],
        ["prospect", "lapsed", "at_risk", "loyal", "new", "repeat"],
        "active",
    )
    return out


def compare_with_dbt(settings: Settings, features: pd.DataFrame, as_of: str, tolerance: float = 1e-9) -> dict[str, Any]:
    """Compare the baseline with dbt's published user_features of `as_of`: same users, every column equal
    (numbers within `tolerance`). Returns the mismatching columns with a few examples each."""
    from segflow.core.warehouse import connect

    with connect(settings.warehouse_path, read_only=True) as con:
        dbt = con.execute("SELECT * FROM marts.user_features_history WHERE as_of = ?::DATE", [as_of]).df()
    dbt = dbt.sort_values("user_id", ignore_index=True)
    ours = features.sort_values("user_id", ignore_index=True)
    if (
        len(dbt) != len(ours)
        or not (dbt["user_id"].astype(str).to_numpy() == ours["user_id"].astype(str).to_numpy()).all()
    ):
        return {
            "equal": False,
            "columns_compared": 0,
            "mismatches": {"user_id": f"{len(ours)} users vs dbt's {len(dbt)}"},
        }
    columns = [c for c in dbt.columns if c in ours.columns]
    missing = sorted(set(dbt.columns) - set(ours.columns))
    mismatches: dict[str, Any] = {c: "column missing from the baseline" for c in missing}
    for column in columns:
        differs = _differs(dbt[column], ours[column], tolerance)
        if differs.any():
            rows = np.flatnonzero(differs)[:3]
            mismatches[column] = {
                "rows": int(differs.sum()),
                "examples": [
                    {
                        "user_id": str(dbt["user_id"].iloc[i]),
                        "dbt": str(dbt[column].iloc[i]),
                        "pandas": str(ours[column].iloc[i]),
                    }
                    for i in rows
                ],
            }
    return {"equal": not mismatches, "columns_compared": len(columns), "mismatches": mismatches}


def _differs(left: pd.Series, right: pd.Series, tolerance: float) -> np.ndarray:
    a_null, b_null = left.isna().to_numpy(), right.isna().to_numpy()
    both = ~a_null & ~b_null
    out = a_null != b_null
    if pd.api.types.is_numeric_dtype(left) and not pd.api.types.is_bool_dtype(left):
        a = pd.to_numeric(left, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        b = pd.to_numeric(right, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        out |= both & ~(np.abs(a - b) <= tolerance)
    elif pd.api.types.is_datetime64_any_dtype(left) or left.dropna().map(type).isin([date]).any():
        a = pd.to_datetime(left).to_numpy()
        b = pd.to_datetime(right).to_numpy()
        out |= both & (a != b)
    else:
        out |= both & (left.astype(str).to_numpy() != right.astype(str).to_numpy())
    return out
