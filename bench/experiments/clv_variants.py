"""Offline experiment (not part of the pipeline): could a simple correction of the lifetime-value model beat
"same as last period" on every error measure of the Online Retail backtest? docs/models.md quotes its output.

Rebuilds what the pipeline's CLV inputs hold from the raw file (completed purchases by customer and day:
invoices not cancelled, positive quantity and price, a customer id), fits segflow's BG/NBD + Gamma-Gamma as of
each date and compares, over the 90 days after it, the model, last period's spend and three corrections fitted
on the time-based holdout (the model fitted as of D - 90 predicting the 90 days to D): a bias scale, a 50/50
blend with last period, and a least-squares stack of the two.

    python bench/experiments/clv_variants.py path/to/online_retail.parquet
"""

from __future__ import annotations

import sys
from datetime import date, timedelta

import numpy as np
import pandas as pd

from segflow.ml.clv import LifetimeValue
from segflow.ml.train import clv_errors

H = 90
DATES = (date(2011, 6, 15), date(2011, 7, 31), date(2011, 9, 10))


def purchase_days(path: str) -> pd.DataFrame:
    raw = pd.read_parquet(path).dropna(subset=["CustomerID"])
    raw = raw[~raw["InvoiceNo"].astype(str).str.startswith("C") & (raw["Quantity"] > 0) & (raw["UnitPrice"] > 0)]
    raw = raw.assign(day=pd.to_datetime(raw["InvoiceDate"]).dt.normalize(), amount=raw["Quantity"] * raw["UnitPrice"])
    return raw.groupby(["CustomerID", "day"])["amount"].sum().reset_index()


def inputs(days: pd.DataFrame, as_of: date) -> pd.DataFrame:
    known = days[days["day"] <= pd.Timestamp(as_of)].copy()
    known["n"] = known.groupby("CustomerID")["day"].rank(method="first")
    by = known.groupby("CustomerID")
    first, last = by["day"].min(), by["day"].max()
    return pd.DataFrame(
        {
            "x": by.size() - 1.0,
            "t_x": (last - first).dt.days.astype(float),
            "T": (pd.Timestamp(as_of) - first).dt.days.astype(float),
            "m": known[known["n"] > 1].groupby("CustomerID")["amount"].mean(),
        }
    )


def spend(days: pd.DataFrame, start: date, end: date, customers: pd.Index) -> np.ndarray:
    window = days[(days["day"] > pd.Timestamp(start)) & (days["day"] <= pd.Timestamp(end))]
    return window.groupby("CustomerID")["amount"].sum().reindex(customers).fillna(0.0).to_numpy()


def main(path: str) -> None:
    days = purchase_days(path)
    for as_of in DATES:
        now, past = inputs(days, as_of), inputs(days, as_of - timedelta(H))
        realised = spend(days, as_of, as_of + timedelta(H), now.index)
        naive = spend(days, as_of - timedelta(H), as_of, now.index)
        model = LifetimeValue.fit(now).expected_spend(now, H)
        # The holdout: fitted as of D - H, judged on the H days to D (last period there: the H days before D - H).
        held = LifetimeValue.fit(past).expected_spend(past, H)
        held_naive = spend(days, as_of - timedelta(2 * H), as_of - timedelta(H), past.index)
        held_realised = spend(days, as_of - timedelta(H), as_of, past.index)
        scale = held_realised.sum() / held.sum()
        weights, *_ = np.linalg.lstsq(np.c_[held, held_naive], held_realised, rcond=None)
        variants = {
            "model": model,
            "same as last period": naive,
            f"model x {scale:.2f} (holdout bias)": model * scale,
            "50/50 blend": (model + naive) / 2,
            f"stack {np.round(weights, 2)}": np.c_[model, naive] @ weights,
        }
        print(f"{as_of}: {len(now):,} customers")
        for name, predicted in variants.items():
            e = clv_errors(predicted, realised)
            print(
                f"  {name:28s} MAE {e['mae']:6.0f}  RMSE {e['rmse']:6.0f}  total {e['total_error']:+.1%}"
                f"  Spearman {e['spearman']:.3f}"
            )


if __name__ == "__main__":
    main(sys.argv[1])
