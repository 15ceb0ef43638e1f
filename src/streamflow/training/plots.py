"""Evaluation plots logged with every run (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay
from sklearn.pipeline import Pipeline


def evaluation_plots(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y_true, proba, ax=ax, name="hold-out")
    ax.set_title("ROC curve (hold-out users)")
    figures["roc_curve.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 5))
    PrecisionRecallDisplay.from_predictions(y_true, proba, ax=ax, name="hold-out")
    ax.set_title("Precision-recall (hold-out users)")
    figures["pr_curve.png"] = fig
    fig, ax = plt.subplots(figsize=(5, 5))
    ConfusionMatrixDisplay.from_predictions(y_true, (proba >= threshold).astype(int), ax=ax, colorbar=False)
    ax.set_title(f"Confusion matrix at threshold {threshold:.3f}")
    figures["confusion_matrix.png"] = fig
    return figures


def importance_plot(pipeline: Pipeline, top: int = 20) -> Figure | None:
    """Impurity importances for trees, |coefficients| for linear models, by encoded feature."""
    model = pipeline[-1]
    if hasattr(model, "feature_importances_"):
        values = np.asarray(model.feature_importances_)
    elif hasattr(model, "coef_"):
        values = np.abs(np.asarray(model.coef_)).ravel()
    else:
        return None
    names = np.asarray(pipeline[:-1].get_feature_names_out())
    order = np.argsort(values)[-top:]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(order) + 1.5))
    ax.barh(names[order], values[order])
    ax.set_title("Feature importance")
    fig.tight_layout()
    return fig
