"""Tree models and honest baselines: majority class, coordinates-only forest, RF, XGBoost."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from joblib import effective_n_jobs
from sklearn.ensemble import RandomForestClassifier

from .base import TabularModel, register_model

__all__ = ["ForestModel", "MajorityModel", "XGBoostModel"]

#: Forest probabilities are summed in this many fixed slices of trees (threads take slices).
PREDICT_SLICES = 8

#: The reference RF's 19 inputs: 9 Sentinel-2 + 7 terrain + 3 climate bands.
REFERENCE_FEATURES = ("s2", "terrain", "climate")


class MajorityModel(TabularModel):
    """Predicts the training fold's class frequencies everywhere (the no-skill null)."""

    def __init__(self, n_classes: int = 2, random_state: int = 0) -> None:
        self.n_classes = n_classes
        self.random_state = random_state

    def _fit(
        self, X: pd.DataFrame, y: np.ndarray, val: tuple[pd.DataFrame, np.ndarray] | None
    ) -> None:
        self.prior_ = np.bincount(y) / len(y)

    def _predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return np.tile(self.prior_, (len(X), 1))


class ForestModel(TabularModel):
    """A scikit-learn random forest (seeded; depth limits honoured for every task)."""

    def __init__(
        self,
        n_classes: int = 2,
        random_state: int = 0,
        n_estimators: int = 253,
        max_depth: int | None = 16,
        min_samples_split: int = 5,
        min_samples_leaf: int = 1,
        max_features: Any = "sqrt",
        max_samples: float | None = None,
        class_weight: Any = None,
        criterion: str = "gini",
        n_jobs: int = -1,
    ) -> None:
        self.n_classes = n_classes
        self.random_state = random_state
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_samples = max_samples
        self.class_weight = class_weight
        self.criterion = criterion
        self.n_jobs = n_jobs

    def _fit(
        self, X: pd.DataFrame, y: np.ndarray, val: tuple[pd.DataFrame, np.ndarray] | None
    ) -> None:
        self.forest_ = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            min_samples_split=self.min_samples_split,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            max_samples=self.max_samples,
            class_weight=self.class_weight,
            criterion=self.criterion,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        ).fit(X.to_numpy(dtype=np.float32), y)

    def _predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """The forest's mean tree probability, summed in a fixed order.

        scikit-learn adds the trees' predictions in the order its threads finish, so two
        predictions of the same rows can differ in the last bits (and flip a tie). Here each
        thread sums a fixed slice of the trees and the slices are added in order: the result
        is the same on every call.
        """
        from joblib import Parallel, delayed

        Xn = np.ascontiguousarray(X.to_numpy(dtype=np.float32))
        trees = self.forest_.estimators_
        # A fixed number of slices (not one per core): the same sums on any machine.
        slices = np.array_split(np.arange(len(trees)), min(len(trees), PREDICT_SLICES))
        n_jobs = min(len(slices), effective_n_jobs(self.n_jobs))

        def partial(idx: np.ndarray) -> np.ndarray:
            total = np.zeros((len(Xn), len(self.forest_.classes_)))
            for i in idx:
                total += trees[i].predict_proba(Xn, check_input=False)
            return total

        parts = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(partial)(i) for i in slices)
        out = parts[0]
        for part in parts[1:]:
            out = out + part
        return out / len(trees)


class XGBoostModel(TabularModel):
    """Gradient-boosted trees (XGBoost ``hist``) with early stopping on the inner spatial split.

    The number of rounds is chosen on the validation split carved from the training fold; the
    test fold never takes part.
    """

    needs_validation = True

    def __init__(
        self,
        n_classes: int = 2,
        random_state: int = 0,
        n_estimators: int = 2000,
        learning_rate: float = 0.05,
        max_depth: int = 6,
        min_child_weight: float = 1.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        gamma: float = 0.0,
        reg_lambda: float = 1.0,
        reg_alpha: float = 0.0,
        max_bin: int = 256,
        early_stopping_rounds: int = 50,
        n_jobs: int = -1,
    ) -> None:
        self.n_classes = n_classes
        self.random_state = random_state
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.gamma = gamma
        self.reg_lambda = reg_lambda
        self.reg_alpha = reg_alpha
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs

    def _fit(
        self, X: pd.DataFrame, y: np.ndarray, val: tuple[pd.DataFrame, np.ndarray] | None
    ) -> None:
        from xgboost import XGBClassifier

        n_present = int(y.max()) + 1
        self.single_class_ = n_present < 2
        if self.single_class_:
            return
        binary = n_present == 2
        use_val = val is not None and len(val[1]) > 0
        self.booster_ = XGBClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            max_depth=self.max_depth,
            min_child_weight=self.min_child_weight,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            gamma=self.gamma,
            reg_lambda=self.reg_lambda,
            reg_alpha=self.reg_alpha,
            max_bin=self.max_bin,
            tree_method="hist",
            n_jobs=self.n_jobs,
            random_state=self.random_state,
            objective="binary:logistic" if binary else "multi:softprob",
            eval_metric="logloss" if binary else "mlogloss",
            early_stopping_rounds=self.early_stopping_rounds if use_val else None,
        )
        eval_set = [(val[0].to_numpy(dtype=np.float32), val[1])] if use_val and val else None
        self.booster_.fit(X.to_numpy(dtype=np.float32), y, eval_set=eval_set, verbose=False)
        self.best_iteration_ = int(getattr(self.booster_, "best_iteration", self.n_estimators))

    def fit_report(self) -> dict[str, float]:
        """The boosting round kept by early stopping on the inner split."""
        return {"best_iteration": float(getattr(self, "best_iteration_", self.n_estimators))}

    def _predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        if self.single_class_:
            return np.ones((len(X), 1))
        return self.booster_.predict_proba(X.to_numpy(dtype=np.float32))


register_model(
    "majority",
    MajorityModel,
    description="null model: the training fold's class frequencies everywhere",
)
register_model(
    "coords_only",
    ForestModel,
    family="rf",
    features=("coords",),
    description="spatial-proxy null: the reference RF on the pedons' x/y alone",
)
register_model(
    "rf",
    ForestModel,
    features=REFERENCE_FEATURES,
    description="the reference Random Forest (253 trees, depth 16, min split 5) on "
    "9 Sentinel-2 + 7 terrain + 3 climate bands",
)
register_model(
    "xgboost",
    XGBoostModel,
    features=REFERENCE_FEATURES,
    description="XGBoost (hist) on the reference's 19 features, early stopping on an "
    "inner spatial validation split",
)
