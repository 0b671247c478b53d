"""The instrumental rule on real separations: quiet vocals are still vocals, a backing alone is not."""

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf
import torch

from ml import config
from ml.catalogue.demo_library import MAJOR, SR, VOCALISTS, WORDS, render_backing, sing_phrase
from ml.device import cpu_bf16_flags
from ml.separation.separation import SeparationInput, SeparationParams, assess, separate_with_torch
from ml.separation.stems import StemCache

CPU = torch.device("cpu")


def quiet_song(seconds: float, vocal_db: float | None, seed: int = 3, voice: int = 1,
               sung_until: float | None = None) -> np.ndarray:  # fmt: skip
    """A demo-style song (n, 2): the demo generator's backing, and its sung phrases (espeak-ng)
    from 2 s to ``sung_until`` (the end by default), their RMS where sung ``vocal_db`` from the
    backing's RMS; ``vocal_db=None``: the backing alone (as the demo's instrumental)."""
    rng = np.random.default_rng(seed)
    vocalist = VOCALISTS[voice]
    backing = render_backing(vocalist.style, seconds, key=2, minor=False, bpm=120.0, seed=seed)
    vocals = np.zeros(len(backing))
    t = 2.0
    while vocal_db is not None and t < min(seconds - 3.0, sung_until or seconds):
        n_words = int(rng.integers(3, 7))
        words = list(rng.choice(WORDS, n_words))
        phrase = sing_phrase(words, [MAJOR[int(d)] - 5 for d in rng.integers(0, 7, n_words)], vocalist, rng)
        phrase = phrase[: int((seconds - 1.5 - t) * SR)]
        vocals[int(t * SR) : int(t * SR) + len(phrase)] += phrase
        t += len(phrase) / SR + float(rng.uniform(0.6, 2.2))
    if vocal_db is not None:
        sung = vocals != 0
        vocals *= np.sqrt(np.mean(backing**2) / np.mean(vocals[sung] ** 2)) * 10 ** (vocal_db / 20)
    mix = backing + vocals[:, None]
    return (mix * 0.89 / np.max(np.abs(mix))).astype(np.float32)


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(
    not cpu_bf16_flags(), reason="this CPU has no bfloat16 units: auto separates in float32 here"))])  # fmt: skip
def test_quiet_vocals_are_kept_and_a_backing_alone_is_instrumental(tmp_path, precision):
    weights = config.paths().spleeter_weights
    assert weights.is_file(), f"{weights} is missing: `make setup` converts the official weights"
    inputs = {
        "quiet_9dB": quiet_song(30.0, -9.0),  # sung all through, 9 dB under the backing
        "sparse_10dB": quiet_song(60.0, -10.0, seed=7, voice=1, sung_until=6.0),  # one phrase, 10 dB under
        "instrumental": quiet_song(30.0, None),  # the backing alone, as the demo's instrumental
    }
    for name, audio in inputs.items():
        sf.write(tmp_path / f"{name}.flac", audio, SR, subtype="PCM_16")
    cache = StemCache(tmp_path / "stems", "torch", "0" * 64, precision=precision)  # the same verdicts in both
    todo = [SeparationInput(name, tmp_path / f"{name}.flac") for name in inputs]
    settings = SeparationParams.from_params(config.load_params())  # the project's rule, as the pipeline runs it
    assert separate_with_torch(todo, cache, weights, CPU, settings) == []

    tracks = pa.Table.from_pylist([{"track_id": n, "release": "r", "path": n} for n in inputs])
    result = assess(tracks, cache, [], settings, tmp_path / "stems")
    assert result.vocals.column("path").to_pylist() == ["quiet_9dB", "sparse_10dB"]
    assert {r["path"]: r["reason"] for r in result.rejected.to_pylist()} == {"instrumental": "instrumental"}

    # the verdicts from the stems' own levels, computed here: the sparse song (one phrase at the
    # start of a minute of music) was an instrumental to the rule against the whole track's level
    def fraction(name: str, per_frame: bool) -> float:
        (vocal_db, mix_db), mix_dbfs = cache.get(name).activity(), cache.get(name).meta["mix_dbfs"]
        if not per_frame:  # the former rule: within 20 dB of the track's mix level, at least 5 %
            return float(np.mean(vocal_db > max(mix_dbfs - 20, -50)))
        floor = max(mix_dbfs + settings.vocal_frame_floor_db, settings.vocal_frame_floor_dbfs)
        return float(np.mean((vocal_db - mix_db > settings.vocal_frame_db) & (vocal_db > floor)))

    kept = dict(zip(result.vocals.column("path").to_pylist(),
                    result.vocals.column("vocal_active_fraction").to_pylist(), strict=True))  # fmt: skip
    for name, active in kept.items():
        assert active == pytest.approx(fraction(name, per_frame=True)) and active >= settings.min_vocal_fraction
    assert fraction("sparse_10dB", per_frame=False) < 0.05
    assert fraction("quiet_9dB", per_frame=True) > 0.2  # most of its singing is heard
    assert fraction("instrumental", per_frame=True) < settings.min_vocal_fraction / 10
