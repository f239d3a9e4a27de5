"""A logistic-regression baseline on the same raw features, so we can say what the network adds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tasks.config import PipelineSpec
from tasks.dataset import LABEL, feature_columns


def _design(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(feature_columns(spec, frame))


def fit_baseline(spec: PipelineSpec, train: pd.DataFrame) -> Pipeline:
    """Mean-imputed (with missing flags), standardised numbers and one-hot categories (unseen -> all
    zeros), as the network sees them, into an L2-regularised logistic regression."""
    columns = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="mean", add_indicator=True, keep_empty_features=True),
                                  StandardScaler()), spec.features.numeric),
        ("categorical", OneHotEncoder(handle_unknown="ignore"), spec.features.categorical),
    ])
    model = make_pipeline(columns, LogisticRegression(max_iter=1000))
    model.fit(_design(spec, train), train[LABEL].to_numpy())
    return model


def baseline_probs(model: Pipeline, spec: PipelineSpec, frame: pd.DataFrame) -> np.ndarray:
    if frame.empty:
        return np.zeros(0, np.float64)
    return np.asarray(model.predict_proba(_design(spec, frame))[:, 1])
