"""Lifetime value (segflow.ml.clv): the published reference fits of BG/NBD and Gamma-Gamma on CDNOW, and the
behaviour the pipeline relies on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import hyp2f1

from segflow.ml.clv import BetaGeo, GammaGamma, LifetimeValue, clv_inputs

CDNOW = Path(__file__).parent / "data" / "cdnow_customers_summary_with_transactions.csv"


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    assert hashlib.sha256(CDNOW.read_bytes()).hexdigest().startswith("7ddd11b55be3227e"), "fixture changed"
    return pd.read_csv(CDNOW)


@pytest.fixture(scope="module")
def bgnbd(cdnow) -> BetaGeo:
    return BetaGeo.fit(cdnow["x"], cdnow["t_x"], cdnow["T"])


def test_bgnbd_reproduces_the_published_cdnow_fit(cdnow, bgnbd):
    # Fader, Hardie and Lee (2005), section 5: r = 0.243, alpha = 4.414, a = 0.793, b = 2.426, LL = -9582.4.
    assert (round(bgnbd.r, 3), round(bgnbd.alpha, 3), round(bgnbd.a, 3), round(bgnbd.b, 3)) == (
        0.243,
        4.414,
        0.793,
        2.426,
    )
    params = np.array([bgnbd.r, bgnbd.alpha, bgnbd.a, bgnbd.b])
    ll = BetaGeo.log_likelihood(params, *(cdnow[c].to_numpy(float) for c in ("x", "t_x", "T"))).sum()
    assert round(ll, 1) == -9582.4
    # The paper's worked example: x = 2, t_x = 30.43, T = 38.86 expects 1.226 transactions in the next 39 weeks.
    assert round(float(bgnbd.expected_purchases(39, 2, 30.43, 38.86)), 3) == 1.226


def test_gamma_gamma_reproduces_the_published_cdnow_fit(cdnow):
    # Fader and Hardie (2013): p = 6.25, q = 3.74, gamma = 15.44 on the 946 customers with repeat purchases
    # (Excel's Solver; the lifetimes package reports 15.45 for the same data - the optimum lies between).
    repeat = cdnow[cdnow["x"] > 0]
    assert len(repeat) == 946
    fit = GammaGamma.fit(repeat["x"], repeat["zbar"])
    assert (round(fit.p, 2), round(fit.q, 2)) == (6.25, 3.74) and abs(fit.gamma - 15.44) <= 0.01
    # A customer without repeat purchases is expected to spend the population mean, p * gamma / (q - 1).
    assert fit.expected_value(np.array([0.0]), np.array([0.0]))[0] == pytest.approx(fit.p * fit.gamma / (fit.q - 1))


def test_quadrature_equals_the_closed_form_where_that_is_well_behaved(cdnow, bgnbd):
    r, alpha, a, b = bgnbd.r, bgnbd.alpha, bgnbd.a, bgnbd.b
    x, t_x, T = (cdnow[c].to_numpy(float) for c in ("x", "t_x", "T"))
    t = 39.0
    z = t / (alpha + T + t)
    closed = (
        (a + b + x - 1)
        / (a - 1)
        * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z))
    )
    closed /= 1 + np.where(x > 0, a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x), 0.0)
    assert np.abs(bgnbd.expected_purchases(t, x, t_x, T) - closed).max() < 1e-4


def test_no_dropout_limit_stays_finite_and_becomes_the_nbd():
    # Real data often fits a -> 0, b -> inf (hardly anyone drops out), where the hypergeometric form overflows.
    model = BetaGeo(r=0.74, alpha=65.9, a=1e-8, b=1e8)
    x = np.array([0.0, 3.0, 40.0, 200.0])
    t_x = np.array([0.0, 60.0, 200.0, 240.0])
    T = np.array([30.0, 90.0, 240.0, 242.0])
    expected = model.expected_purchases(90, x, t_x, T)
    assert np.isfinite(expected).all() and (expected >= 0).all()
    nbd = (model.r + x) * 90 / (model.alpha + T)
    assert expected == pytest.approx(nbd, rel=1e-4)
    assert model.p_alive(x, t_x, T) == pytest.approx(np.ones(4))


def test_lifetime_value_per_customer_from_user_features():
    features = pd.DataFrame(
        {
            "purchase_days": [0, 1, 4, 12, 5],
            "days_first_to_last_purchase": [None, 0, 60, 170, 20],
            "customer_age_days": [None, 40, 100, 180, 200],
            "repeat_purchase_value": [None, None, 80.0, 120.0, 50.0],
        }
    )
    inputs = clv_inputs(features)
    assert inputs.loc[0].isna()[["x", "t_x", "T"]].all() and list(inputs["x"][1:]) == [0, 3, 11, 4]
    rng = np.random.default_rng(1)
    n = 400
    first = rng.integers(0, 150, n)
    days = 1 + rng.poisson(3, n)
    history = pd.DataFrame(
        {
            "purchase_days": days,
            "days_first_to_last_purchase": np.where(days > 1, rng.integers(1, 30, n), 0),
            "customer_age_days": 150 - first + 30,
            "repeat_purchase_value": np.where(days > 1, rng.gamma(4, 20, n), np.nan),
        }
    )
    model = LifetimeValue.fit(clv_inputs(history))
    out = model.predict(inputs)
    assert out.loc[0].isna().all(), "no purchase, no value"
    assert (out.loc[1:, "p_alive"].between(0, 1)).all() and (out.loc[1:, "clv"] > 0).all()
    # The frequent, recent buyer is worth more than the one who went quiet long ago.
    assert out.loc[3, "clv"] > out.loc[4, "clv"] and out.loc[3, "p_alive"] > out.loc[4, "p_alive"]
    undiscounted = LifetimeValue(model.purchases, model.value, discount_rate=0.0).predict(inputs)
    assert (undiscounted.loc[1:, "clv"] > out.loc[1:, "clv"]).all()
    spend = model.expected_spend(inputs, 365)
    assert spend[0] == 0 and spend[1:] == pytest.approx(undiscounted.loc[1:, "clv"].to_numpy(), rel=1e-6)


@pytest.mark.parametrize("top", [250, 500])
def test_gamma_gamma_without_a_stable_population_mean_values_newcomers_at_the_observed_mean(top):
    """Customers' mean order values spread log-uniformly from 5 to `top`, each nearly constant: the fit reaches
    q near or below 1, where the model's population mean p*gamma/(q-1) explodes or does not exist. Customers
    without repeat purchases then get the repeat buyers' observed mean value - never a negative or a tenfold one."""
    rng = np.random.default_rng(1)
    x = rng.integers(1, 15, 800).astype(float)
    means = np.exp(rng.uniform(np.log(5), np.log(top), 800))
    m = np.array([rng.normal(mu, 0.01 * mu, int(k)).mean() for mu, k in zip(means, x, strict=True)])
    model = GammaGamma.fit(x, m)
    assert model.q < 2
    assert model.observed_mean == pytest.approx(np.average(m, weights=x))
    values = model.expected_value(np.array([0.0, 1.0, 5.0]), np.array([np.nan, 25.0, 150.0]))
    assert values[0] == pytest.approx(model.observed_mean)
    assert values[1] == pytest.approx(25, rel=0.25) and values[2] == pytest.approx(150, rel=0.05)
    assert (values > 0).all()


def test_too_few_repeat_buyers_value_each_at_their_own_mean():
    """A young shop: 30 buyers, 3 of them with repeat purchases - too few to fit Gamma-Gamma. The lifetime value
    still comes out (finite, non-negative): repeat buyers at their own mean value, the others at the observed mean."""
    x = np.array([0.0] * 27 + [1.0, 2.0, 3.0])
    inputs = pd.DataFrame(
        {"x": x, "t_x": x * 10, "T": np.full(30, 60.0), "m": np.array([np.nan] * 27 + [10.0, 20.0, 30.0])}
    )
    model = LifetimeValue.fit(inputs)
    assert np.isnan(model.value.p)
    values = model.value.expected_value(x, np.nan_to_num(inputs["m"].to_numpy()))
    observed = (10 * 1 + 20 * 2 + 30 * 3) / 6
    assert values[0] == pytest.approx(observed) and list(values[-3:]) == [10.0, 20.0, 30.0]
    clv = model.predict(inputs, 365, 90)["clv"]
    assert clv.notna().all() and (clv >= 0).all()
