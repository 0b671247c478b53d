"""The code MLflow runs to build the registered model (models from code: no pickle is stored)."""

from mlflow.models import set_model

from ml.identification.bundle import VocalistModel

set_model(VocalistModel())
