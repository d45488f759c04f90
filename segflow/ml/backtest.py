"""Backtests of what the pipeline publishes: for each date D, a scheduled run on fresh, isolated stores (training
included - no model has seen anything after D), then its published scores against what customers did in the H
days after D, beside independent baselines computed in the same run:

- churn: the published churn_probability; recency alone; an RFM logistic regression trained as of D - H (its
  labels are the H days up to D); BG/NBD expected purchases fitted as of D. ROC-AUC, PR-AUC, Brier score,
  calibration (expected calibration error over 10 bins) and lift in the top decile.
- lifetime value: the spend over the H days after D predicted by the lifetime-value model that scored D, against
  "same as last period" (each customer's spend in the H days up to D). Mean absolute and root mean squared error
  per customer, error of the total, rank correlation.

Outcomes come from the same warehouse built further: after the run for D, the extract loads what arrived until
D + H and the features as of D + H are built; a customer's orders (spend) in (D, D + H] are the growth of their
lifetime orders (spend) between the two dates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from segflow.core.config import Settings, load_settings, stores_under

log = logging.getLogger(__name__)

CHURN_MODELS = ("segflow", "recency_only", "rfm_logistic_regression", "bgnbd_expected_purchases")
CLV_MODELS = ("segflow", "same_as_last_period")
CHURN_METRICS = ("roc_auc", "pr_auc", "brier", "ece", "lift_top_decile")
CLV_METRICS = ("mae", "rmse", "total_error", "spearman")


@dataclass
class DateResult:
    as_of: str
    customers: int
    churn_rate: float
    churn: dict[str, dict[str, float]]
    lifetime_value: dict[str, dict[str, float]]
    models: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def isolated_environ(root: Path, horizon: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one backtest date: every store under `root`, the sources as configured."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SEGFLOW__")}
    env.update(stores_under(root, f"sqlite:///{root / 'crm_writeback.sqlite'}"))
    env.update({"MPLCONFIGDIR": str(root / "mpl"), "SEGFLOW_TASK_RETRIES": "0"})
    if horizon is not None:
        env["SEGFLOW__CHURN__HORIZON_DAYS"] = str(horizon)
    return env


def run_pipeline(config: Path, as_of: date, env: dict[str, str], log_file: Path) -> None:
    """`segflow run` for `as_of`, as a scheduled run would do it (it trains: the stores are new)."""
    with open(log_file, "w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "segflow.local.cli", "run", "--config", str(config), "--as-of", as_of.isoformat()],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"segflow run as of {as_of} failed (log: {log_file}):\n" + "\n".join(tail))


# --- metrics --------------------------------------------------------------------------------------


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean probability| over equal-width probability bins, weighted by their users."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(y[inside].mean() - p[inside].mean())
    return float(total / len(y))


def churn_metrics(y: np.ndarray, score: np.ndarray, probability: bool) -> dict[str, float]:
    from segflow.ml.churn import evaluate

    out = evaluate(y, score, probabilities=probability)
    out["ece"] = expected_calibration_error(y, score) if probability else float("nan")
    return {k: out[k] for k in CHURN_METRICS}


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Observed churn rate against the mean predicted probability in each decile of the prediction."""
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append({"predicted": float(p[chunk].mean()), "observed": float(y[chunk].mean()), "n": int(len(chunk))})
    return out


def no_purchase_between(buyers: pd.DataFrame, later: pd.DataFrame) -> np.ndarray:
    """1 for each of `buyers` (features as of a date, indexed by user) whose lifetime orders did not grow by the
    date of `later` (features as of a later date), else 0."""
    orders = later.set_index("user_id")["lifetime_orders"].reindex(buyers.index).fillna(buyers["lifetime_orders"])
    return ((orders - buyers["lifetime_orders"]) <= 0).to_numpy(int)


DATA_END_SLACK_DAYS = 7  # a purchase this close to D + H shows the data reaches it (shops close on holidays)


def evaluate_date(settings: Settings, as_of: date, horizon: int) -> DateResult:
    """Score the published scores of `as_of` in the warehouse of `settings` against the H days after it."""
    from segflow.core.warehouse import connect
    from segflow.extract import run_extract
    from segflow.ml.churn import _candidate
    from segflow.ml.clv import BetaGeo, clv_inputs
    from segflow.ml.features import MODEL_FEATURES, prepare, read_features
    from segflow.ml.registry import CLV_MODEL, configure_mlflow, load_version
    from segflow.ml.train import clv_errors, ensure_feature_partition, spend_between

    later, earlier = as_of + timedelta(days=horizon), as_of - timedelta(days=horizon)
    with connect(settings.warehouse_path, read_only=True) as con:
        scores = con.execute(
            "SELECT * FROM marts.user_scores_history WHERE as_of = ?::DATE AND churn_probability IS NOT NULL",
            [as_of.isoformat()],
        ).df()
    if scores.empty:
        raise LookupError(f"no published churn scores as of {as_of}")
    run_extract(settings, later, f"backtest_outcomes_{later}")  # what arrived until D + H, to observe outcomes
    for day in (earlier, later):
        ensure_feature_partition(settings, day)
    now, after, before = (read_features(settings.warehouse_url, d) for d in (as_of, later, earlier))
    newest = pd.to_datetime(after["last_purchase_date"]).max()
    if pd.isna(newest) or newest.date() < later - timedelta(days=DATA_END_SLACK_DAYS):
        raise LookupError(
            f"the data ends with a purchase on {newest.date() if pd.notna(newest) else 'no date'}, before {later} "
            f"(as of {as_of} + {horizon} days): what customers did after {as_of} cannot be observed; "
            "choose earlier dates or a shorter --horizon"
        )
    buyers = now[now["lifetime_orders"] > 0].set_index("user_id")
    scores = scores.set_index("user_id").reindex(buyers.index)
    churned = no_purchase_between(buyers, after)
    if churned.min() == churned.max():
        raise LookupError(f"as of {as_of}: every buyer {'churned' if churned[0] else 'bought again'}; nothing to rank")

    churn: dict[str, dict[str, float]] = {}
    churn["segflow"] = churn_metrics(churned, scores["churn_probability"].to_numpy(float), True)
    recency = buyers["recency_days"].astype(float).to_numpy()
    churn["recency_only"] = churn_metrics(churned, recency, False)
    # An RFM logistic regression as a data scientist would train it on D: features as of D - H, labelled by D.
    past = before[before["lifetime_orders"] > 0].set_index("user_id")
    past_label = no_purchase_between(past, now)
    past_features = prepare(past.reset_index(), MODEL_FEATURES)
    rfm = _candidate("rfm_logistic_regression", 0, past_features).fit(past_features, past_label)
    rfm_p = rfm.predict_proba(prepare(buyers.reset_index(), MODEL_FEATURES))[:, 1]
    churn["rfm_logistic_regression"] = churn_metrics(churned, rfm_p, True)
    inputs = clv_inputs(buyers.reset_index())
    bgnbd = BetaGeo.fit(inputs["x"], inputs["t_x"], inputs["T"])
    expected = bgnbd.expected_purchases(horizon, inputs["x"], inputs["t_x"], inputs["T"])
    churn["bgnbd_expected_purchases"] = churn_metrics(churned, -expected, False)

    realised = spend_between(buyers.reset_index(), after).to_numpy()
    mlflow = configure_mlflow(settings)
    version = str(scores["clv_model_version"].dropna().iloc[0])
    model = load_version(mlflow, CLV_MODEL, version)
    # Each buyer's spend over the H days to D; customers whose first purchase fell in that window count it all.
    spent_before = before.set_index("user_id")["lifetime_spend"].astype(float).reindex(buyers.index).fillna(0.0)
    last_period = (buyers["lifetime_spend"].astype(float) - spent_before).clip(lower=0.0).to_numpy()
    lifetime_value = {
        "segflow": clv_errors(model.expected_spend(inputs, horizon), realised),
        "same_as_last_period": clv_errors(last_period, realised),
    }
    return DateResult(
        as_of.isoformat(),
        int(len(buyers)),
        float(churned.mean()),
        churn,
        lifetime_value,
        {
            "churn_model_version": str(scores["churn_model_version"].dropna().iloc[0]),
            "clv_model_version": version,
            "calibration": json.dumps(calibration_table(churned, scores["churn_probability"].to_numpy(float))),
        },
    )


# --- the whole backtest ---------------------------------------------------------------------------


def summarise(results: list[DateResult]) -> dict:
    """Mean and standard deviation over the dates of every model's metrics, and the margins the issue of churn
    (segflow against the best baseline, ROC-AUC) and lifetime value (against same-as-last-period, MAE) turn on."""

    def spread(values: list[float]) -> dict[str, float]:
        arr = np.array(values, dtype=float)
        return {"mean": float(np.nanmean(arr)), "std": float(np.nanstd(arr)), "min": float(np.nanmin(arr))}

    churn = {
        m: {k: spread([r.churn[m][k] for r in results]) for k in CHURN_METRICS if not np.isnan(results[0].churn[m][k])}
        for m in CHURN_MODELS
    }
    clv = {m: {k: spread([r.lifetime_value[m][k] for r in results]) for k in CLV_METRICS} for m in CLV_MODELS}
    margins = []
    for r in results:
        best = max((m for m in CHURN_MODELS if m != "segflow"), key=lambda m: r.churn[m]["roc_auc"])
        margins.append(
            {
                "as_of": r.as_of,
                "churn_auc_margin": r.churn["segflow"]["roc_auc"] - r.churn[best]["roc_auc"],
                "best_churn_baseline": best,
                "clv_mae_gain": r.lifetime_value["same_as_last_period"]["mae"] - r.lifetime_value["segflow"]["mae"],
                "clv_total_error_gain": abs(r.lifetime_value["same_as_last_period"]["total_error"])
                - abs(r.lifetime_value["segflow"]["total_error"]),
                "clv_rmse_gain": r.lifetime_value["same_as_last_period"]["rmse"] - r.lifetime_value["segflow"]["rmse"],
            }
        )
    return {"churn": churn, "lifetime_value": clv, "margins": margins}


def run_backtest(
    config: Path,
    dates: list[date],
    horizon: int | None = None,
    work_dir: Path | None = None,
    keep: bool = False,
    on_date: Callable[[DateResult], None] | None = None,
) -> dict:
    """Backtest `dates` (each on its own fresh stores under `work_dir`); returns the report (see summarise)."""
    base = load_settings(config)
    horizon = horizon or base.horizon_days
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="segflow-backtest-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for day in dates:
        started = time.time()
        root = (work / day.isoformat()).resolve()
        if root.exists():
            shutil.rmtree(root)  # fresh stores: nothing of an earlier attempt may leak in
        root.mkdir(parents=True)
        env = isolated_environ(root, horizon)
        run_pipeline(Path(config).resolve(), day, env, root / "run.log")
        settings = load_settings(config, environ=env)
        with open(root / "evaluate.log", "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            result = evaluate_date(settings, day, horizon)
        result.seconds = round(time.time() - started, 1)
        results.append(result)
        if on_date:
            on_date(result)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    report = {
        "config": str(Path(config).resolve()),
        "horizon_days": horizon,
        "dates": [r.__dict__ for r in results],
        "summary": summarise(results),
    }
    if not keep and work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return report


def log_to_mlflow(settings: Settings, report: dict) -> str:
    """One run in the '<experiment> backtests' experiment of the configured MLflow: means, spreads and per-date
    values of every metric, and the report as JSON. Returns the run id."""
    from segflow.ml.registry import configure_mlflow

    mlflow = configure_mlflow(settings)
    name = f"{settings.get('mlflow', 'experiment', default='segflow')} backtests"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name)
    mlflow.set_experiment(name)
    dates = [d["as_of"] for d in report["dates"]]
    with mlflow.start_run(run_name=f"backtest {', '.join(dates)}") as run:
        mlflow.log_params(
            {"dates": ",".join(dates), "horizon_days": report["horizon_days"], "config": report["config"]}
        )
        metrics = {}
        for family in ("churn", "lifetime_value"):
            for model, values in report["summary"][family].items():
                for metric, stats in values.items():
                    metrics[f"{family}.{model}.{metric}.mean"] = stats["mean"]
                    metrics[f"{family}.{model}.{metric}.std"] = stats["std"]
        for row in report["dates"]:
            stamp = row["as_of"].replace("-", "")
            for family in ("churn", "lifetime_value"):
                for model, values in row[family].items():
                    for metric, value in values.items():
                        metrics[f"{family}.{model}.{metric}.{stamp}"] = value
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
        mlflow.log_dict(report, "backtest.json")
        return run.info.run_id


def format_report(report: dict) -> list[str]:
    """Plain-text tables: churn and lifetime value per date and model, then mean ± std over the dates."""
    lines = [f"Backtest of {report['config']} - horizon {report['horizon_days']} days"]
    lines.append("")
    lines.append("Churn (published scores vs independent baselines)")
    header = f"{'as of':<12}{'model':<28}" + "".join(f"{m:>17}" for m in CHURN_METRICS)
    lines.append(header)
    for row in report["dates"]:
        for model in CHURN_MODELS:
            values = row["churn"][model]
            lines.append(
                f"{row['as_of']:<12}{model:<28}"
                + "".join(f"{'-' if v != v else f'{v:.4f}':>17}" for v in (values[m] for m in CHURN_METRICS))
            )
    lines.append("")
    lines.append(f"Lifetime value: spend over the next {report['horizon_days']} days")
    lines.append(f"{'as of':<12}{'model':<28}" + "".join(f"{m:>17}" for m in CLV_METRICS))
    for row in report["dates"]:
        for model in CLV_MODELS:
            values = row["lifetime_value"][model]
            lines.append(
                f"{row['as_of']:<12}{model:<28}"
                + "".join(
                    f"{values[m]:>17.4f}" if m != "mae" and m != "rmse" else f"{values[m]:>17.2f}" for m in CLV_METRICS
                )
            )
    lines.append("")
    lines.append("Over the dates (mean ± std)")
    for family, models, metrics in (
        ("churn", CHURN_MODELS, CHURN_METRICS),
        ("lifetime_value", CLV_MODELS, CLV_METRICS),
    ):
        for model in models:
            stats = report["summary"][family][model]
            cells = [f"{m} {stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" for m in metrics if m in stats]
            lines.append(f"  {family:<15}{model:<28}" + "; ".join(cells))
    lines.append("")
    lines.append("Margins (positive: segflow is better)")

    def verdict(gain: float) -> str:
        return "better" if gain > 0 else "worse"

    for m in report["summary"]["margins"]:
        lines.append(
            f"  {m['as_of']}: churn ROC-AUC {m['churn_auc_margin']:+.4f} against the best baseline "
            f"({m['best_churn_baseline']}); lifetime value against same-as-last-period: "
            f"MAE {m['clv_mae_gain']:+.2f} ({verdict(m['clv_mae_gain'])}), "
            f"RMSE {m['clv_rmse_gain']:+.2f} ({verdict(m['clv_rmse_gain'])}), "
            f"|total error| {m['clv_total_error_gain']:+.4f} ({verdict(m['clv_total_error_gain'])})"
        )
    return lines
