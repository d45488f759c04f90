"""Customer lifetime value: BG/NBD for the number of future purchases and whether a customer is still "alive", and
the Gamma-Gamma model for the value of a purchase (Fader, Hardie and Lee 2005, "Counting your customers the easy
way"; Fader and Hardie 2013, "The Gamma-Gamma model of monetary value").

Both are fitted by maximum likelihood (the MAP estimate under flat priors) with scipy: their likelihoods are closed
form. pymc-marketing's CLV models were measured here first (docs/models.md): they add ~300 MB (PyMC, PyTensor,
ArviZ, xarray), take 6.6 s to import and 20 s to fit 4,000 customers with MAP - mostly compiling PyTensor graphs
into a cache under $HOME - for the same point estimates; tests/ml/test_clv.py reproduces the published CDNOW fits
of both models to the precision the papers state.

Per customer, as of a date: x = repeat purchases (purchase days after the first), t_x = days from the first to
the last purchase, T = days from the first purchase to the as-of date, m = mean value of the repeat purchases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaincinv, betaln, gammaln, logsumexp

from segflow.ml.features import CLV_FEATURES

# Gauss-Legendre nodes and weights on (0, 1), for expectations over a customer's dropout probability.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(64)
_NODES, _WEIGHTS = (_GL_X + 1) / 2, _GL_W / 2


@dataclass(frozen=True)
class BetaGeo:
    """BG/NBD: purchases follow a Poisson process of rate lambda ~ Gamma(r, alpha) while alive; after each purchase
    the customer drops out with probability p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    @staticmethod
    def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = params
        common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
        alive = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + T)
        dropped = np.where(
            x > 0,
            betaln(a + 1, np.maximum(b + x - 1, 1e-12)) - betaln(a, b) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
        return common + logsumexp(np.vstack([alive, dropped]), axis=0)

    @classmethod
    def fit(cls, x, t_x, T) -> BetaGeo:
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        if len(x) < 10:
            raise ValueError(f"BG/NBD needs at least 10 customers, got {len(x)}")

        def objective(log_params):
            return -cls.log_likelihood(np.exp(log_params), x, t_x, T).sum() / len(x)

        start = np.log([1.0, max(float(T.mean()), 1.0), 1.0, 1.0])
        # Bounded quasi-Newton in log space: on data with hardly any dropout the likelihood keeps rising towards
        # a, b -> inf (the NBD limit) and an unbounded search wanders off to overflowing values (a simplex search
        # took minutes there on 10,000 customers; this takes a second).
        bounds = [(np.log(1e-8), np.log(1e8))] * 4
        best = minimize(
            objective, start, method="L-BFGS-B", bounds=bounds, options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 5000}
        )
        return cls(*(float(v) for v in np.exp(best.x)))

    def _odds_dropped(self, x, t_x, T):
        """a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x) for x > 0: how much likelier 'dropped out' is than 'alive'."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_odds = (
                np.log(self.a)
                - np.log(np.maximum(self.b + x - 1, 1e-300))
                + (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
            )
            odds = np.exp(np.minimum(log_odds, 700.0))
        return np.where(x > 0, odds, 0.0)

    def p_alive(self, x, t_x, T) -> np.ndarray:
        return 1.0 / (1.0 + self._odds_dropped(x, t_x, T))

    def expected_purchases(self, t: float, x, t_x, T) -> np.ndarray:
        """E[purchases in (T, T + t]] given the customer's history.

        Alive at T, a customer's rate and dropout probability follow lambda ~ Gamma(r + x, alpha + T) and
        p ~ Beta(a, b + x); purchases then number (1 - exp(-lambda p t)) / p on average, so
            E = P(alive) * E_p[(1 - (1 + p t / (alpha + T))^-(r + x)) / p].
        This is the paper's eq. 10, but computed by quadrature over p instead of through its Gauss hypergeometric
        function, which loses all precision when the fit sits near the no-dropout limit (a -> 0, b -> inf), as it
        does on real data where hardly anyone drops out (Online Retail: a ~ 1e-3, b ~ 1e5)."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        c = t / (self.alpha + T)
        conditional = np.empty(np.broadcast(x, c).shape)
        for value in np.unique(x):
            rows = x == value
            # Quantiles of Beta(a, b + x) at Gauss-Legendre nodes in (0, 1): E_p[g(p)] = integral of g(F^-1(u)) du.
            p = betaincinv(self.a, self.b + value, _NODES)
            cx = np.broadcast_to(c, x.shape)[rows][:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = -np.expm1(-(self.r + value) * np.log1p(cx * p)) / p
            g = np.where(p > 0, ratio, (self.r + value) * cx)  # the limit p -> 0: no dropout
            conditional[rows] = g @ _WEIGHTS
        return self.p_alive(x, t_x, T) * conditional

    def expected_purchases_new(self, t: float) -> float:
        """E[purchases in (0, t]] of a customer just acquired."""
        return float(self.expected_purchases(t, np.zeros(1), np.zeros(1), np.zeros(1))[0])


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma: a customer's purchase values are Gamma(p, nu) around their own mean, nu ~ Gamma(q, gamma).
    Fitted on customers with repeat purchases (x > 0) and their mean repeat value m."""

    p: float
    q: float
    gamma: float
    # Mean purchase value of the repeat buyers it was fitted on, weighted by purchases: the value of a customer
    # without repeat purchases when the model's population mean p*gamma/(q-1) is unreliable - it does not exist
    # for q <= 1 and has no finite variance for q <= 2, where it swings wildly with q (reached when customers'
    # values vary little around very different means).
    observed_mean: float = float("nan")

    @staticmethod
    def log_likelihood(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        p, q, gamma = params
        return (
            gammaln(p * x + q)
            - gammaln(p * x)
            - gammaln(q)
            + q * np.log(gamma)
            + (p * x - 1) * np.log(m)
            + p * x * np.log(x)
            - (p * x + q) * np.log(gamma + m * x)
        )

    @classmethod
    def fit(cls, x, m) -> GammaGamma:
        x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
        keep = (x > 0) & (m > 0) & np.isfinite(m)
        if keep.sum() < 10:
            raise ValueError(f"Gamma-Gamma needs at least 10 customers with repeat purchases, got {int(keep.sum())}")
        x, m = x[keep], m[keep]

        def objective(log_params):
            return -cls.log_likelihood(np.exp(log_params), x, m).sum() / len(x)

        start = np.log([1.0, 1.0, max(float(np.median(m)), 1.0)])
        # Nelder-Mead finds the basin, L-BFGS-B polishes. On Online Retail it converges in ~200 iterations; where
        # values barely vary within a customer the likelihood has a ridge towards p -> infinity that Nelder-Mead
        # walks until maxiter (20,000 took 70 s at 100k users, 2,000 reaches the same optimum after the polish).
        best = minimize(
            objective, start, method="Nelder-Mead", options={"maxiter": 2_000, "xatol": 1e-8, "fatol": 1e-10}
        )
        bounds = [(np.log(1e-8), np.log(1e8))] * 3
        best = minimize(objective, np.clip(best.x, bounds[0][0], bounds[0][1]), method="L-BFGS-B", bounds=bounds)
        return cls(*(float(v) for v in np.exp(best.x)), observed_mean=float(np.average(m, weights=x)))

    def expected_value(self, x, m) -> np.ndarray:
        """E[value of a purchase | x repeat purchases of mean m]; the population mean for customers without any."""
        x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
        if np.isnan(self.p):  # not fitted (too few repeat buyers): no shrinkage
            return np.where((x > 0) & (m > 0), m, self.observed_mean)
        stable = self.q > 2 or np.isnan(self.observed_mean)
        population = self.p * self.gamma / (self.q - 1) if stable else self.observed_mean
        with np.errstate(divide="ignore", invalid="ignore"):
            shrunk = self.p * x + self.q - 1
            individual = np.where(shrunk > 0, self.p * (self.gamma + m * x) / shrunk, m)
        return np.where((x > 0) & (m > 0), individual, population)


def clv_inputs(features: pd.DataFrame) -> pd.DataFrame:
    """x, t_x, T (days) and m of each user from user_features (segflow.ml.features.CLV_FEATURES); buyers only have
    them (NaN otherwise)."""
    days, t_x, T, m = (pd.to_numeric(features[c], errors="coerce").astype(float) for c in CLV_FEATURES)
    return pd.DataFrame({"x": (days - 1).where(days > 0), "t_x": t_x, "T": T, "m": m}, index=features.index)


@dataclass(frozen=True)
class LifetimeValue:
    """The two models together: expected orders, P(alive) and discounted value over a horizon."""

    purchases: BetaGeo
    value: GammaGamma
    discount_rate: float = 0.10  # per year

    @classmethod
    def fit(cls, inputs: pd.DataFrame, discount_rate: float = 0.10) -> LifetimeValue:
        """Fit both models on the buyers of `inputs` (clv_inputs): BG/NBD on everyone with a purchase, Gamma-Gamma
        on those with repeat purchases of positive value."""
        buyers = inputs.dropna(subset=["x", "t_x", "T"])
        buyers = buyers[(buyers["x"] >= 0) & (buyers["T"] >= buyers["t_x"])]
        purchases = BetaGeo.fit(buyers["x"], buyers["t_x"], buyers["T"])
        try:
            value = GammaGamma.fit(buyers["x"], buyers["m"].fillna(0.0))
        except ValueError:
            # Too few repeat buyers to fit (a young shop): each repeat buyer's own mean, the observed mean for
            # the others - the churn and persona models still train and score.
            repeat = buyers[(buyers["x"] > 0) & (buyers["m"] > 0)]
            observed = float(np.average(repeat["m"], weights=repeat["x"])) if len(repeat) else float("nan")
            value = GammaGamma(float("nan"), float("nan"), float("nan"), observed_mean=observed)
        return cls(purchases, value, discount_rate)

    def expected_spend(self, frame: pd.DataFrame, days: float) -> np.ndarray:
        """Undiscounted expected spend over the next `days` (0 for users without purchases)."""
        x, t_x, T, m = (frame[c].astype(float).to_numpy() for c in ("x", "t_x", "T", "m"))
        known = ~np.isnan(x) & ~np.isnan(t_x) & ~np.isnan(T)
        out = np.zeros(len(frame))
        if known.any():
            value = self.value.expected_value(x[known], np.nan_to_num(m[known]))
            out[known] = self.purchases.expected_purchases(days, x[known], t_x[known], T[known]) * value
        return out

    def params(self) -> dict[str, float]:
        return {
            **{f"bgnbd_{k}": float(v) for k, v in self.purchases.__dict__.items()},
            **{f"gamma_gamma_{k}": float(v) for k, v in self.value.__dict__.items()},
            "discount_rate": self.discount_rate,
        }

    def predict(self, frame: pd.DataFrame, horizon_days: int = 365, orders_days: int = 90) -> pd.DataFrame:
        """frame: x, t_x, T (days) and m per customer (NaN for non-buyers, who get NaN back). Returns
        expected_orders_<orders_days>d, p_alive, expected_order_value and clv (value of the purchases expected
        over `horizon_days`, month by month, discounted)."""
        x, t_x, T, m = (frame[c].astype(float).to_numpy() for c in ("x", "t_x", "T", "m"))
        known = ~np.isnan(x) & ~np.isnan(t_x) & ~np.isnan(T)
        x, t_x, T, m = (np.where(known, v, 0.0) for v in (x, t_x, T, m))
        value = self.value.expected_value(x, np.nan_to_num(m))
        monthly = (1 + self.discount_rate) ** (1 / 12) - 1
        months = int(np.ceil(horizon_days / 30.4375))
        clv = np.zeros(len(frame))
        previous = np.zeros(len(frame))
        for month in range(1, months + 1):
            cumulative = self.purchases.expected_purchases(min(month * 30.4375, horizon_days), x, t_x, T)
            clv += (cumulative - previous) * value / (1 + monthly) ** month
            previous = cumulative
        out = pd.DataFrame(
            {
                f"expected_orders_{orders_days}d": self.purchases.expected_purchases(orders_days, x, t_x, T),
                "p_alive": self.purchases.p_alive(x, t_x, T),
                "expected_order_value": value,
                "clv": clv,
            },
            index=frame.index,
        )
        return out.where(pd.Series(known, index=frame.index), np.nan, axis=0)
