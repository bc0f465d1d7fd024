"""Predicting with trained models: saved models loaded back from MLflow (maps build on this)."""

from .predictor import Predictor, load_model

__all__ = ["Predictor", "load_model"]
