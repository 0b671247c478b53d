"""An embedding model's run folder as an MLflow pyfunc model: ``predict`` takes clips (a float32
array (N, samples) at 16 kHz) and returns each clip's probability per singer (a DataFrame, one
column per singer), so the registered version can be loaded and served by MLflow itself."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np


class EmbeddingModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch

        from ml.identification.backend import load_backend
        from ml.training.embedding_run import embedder_for

        self.info = json.loads(Path(context.artifacts["bundle.json"]).read_text(encoding="utf-8"))
        self.embedder, _ = embedder_for(self.info, torch.device("cpu"))
        self.pipeline = load_backend(Path(context.artifacts["backend.skops"]))

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        clips = torch.from_numpy(np.asarray(model_input, dtype=np.float32).reshape(len(model_input), -1))
        probabilities = self.pipeline.predict_proba(self.embedder.embed(clips))
        return pd.DataFrame(probabilities, columns=[str(c) for c in self.pipeline.classes_])
