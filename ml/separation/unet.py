"""Spleeter's 2-stems U-Net in PyTorch, with the official weights, streamed over files of any length.

The network and the signal path are those of ``spleeter`` 2.4 (``model/functions/unet.py`` and
``model/__init__.py``) with its ``2stems`` configuration:

* 44.1 kHz stereo; STFT with a 4096-sample periodic Hann window and a 1024-sample hop, after a
  frame of zeros is prepended; the magnitude of the lowest 1024 bins, cut into 512-frame chunks;
* one U-Net per stem (vocals, accompaniment): six 5×5 stride-2 convolutions (16…512 filters,
  batch norm, leaky ReLU 0.2), six 5×5 stride-2 transposed convolutions (ReLU, batch norm,
  dropout), skip connections from the pre-norm encoder outputs, a 4×4 dilated convolution with a
  sigmoid giving a soft mask that multiplies the input magnitude;
* ratio masks from the squared outputs, zero above bin 1024, applied to the complex STFT, and an
  inverse STFT with the same window (overlap-add scaled by 2/3).

Speed on CPU: activations stay channels-last, and each stride-2 transposed convolution runs as
ordinary convolutions: its four output phases are 2×2, 2×3, 3×2 and 3×3 kernels over the input
(or one 3×3 convolution with four times the output channels and a pixel shuffle, for the
single-channel last decoder). They compute exactly the same sums, faster than oneDNN's
transposed convolution here (``benchmarks/separation.py``).

Precision (``compute.precision``, ``ml/device.py``): float32; bfloat16 under ``torch.autocast`` where
the CPU has bfloat16 units (the convolutions in bfloat16, batch norm, masks and the signal path in
float32: about 30 dB SNR against float32, 1.5-1.8x faster per U-Net); float16 on CUDA.

Each 512-frame chunk goes through the network on its own, so cutting a file into chunks and
batching chunks of several files together gives exactly the result of the whole file at once;
that is how memory stays bounded (a few chunks at a time) whatever the length.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F
from torch import nn

from ml.device import autocast

SAMPLE_RATE = 44100
FRAME_LENGTH = 4096
FRAME_STEP = 1024
CHUNK_FRAMES = 512  # T: frames per network input
MODEL_BINS = 1024  # F: the lowest STFT bins the network sees
STEMS = ("vocals", "accompaniment")
EPSILON = 1e-10
ENCODER_FILTERS = (16, 32, 64, 128, 256, 512)
CHUNK_SAMPLES = CHUNK_FRAMES * FRAME_STEP


def _same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' padding (the extra sample goes after)."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _phase_taps(parity: int) -> torch.Tensor:
    """(3, 5): which of a 5-tap stride-2 transposed kernel's taps reach output phase ``parity``
    from the inputs at offsets -1, 0, +1, after TF's 'same' crop of one leading sample."""
    taps = torch.zeros(3, 5)
    if parity == 0:  # output 2q: inputs q-1 and q
        taps[0, 3] = taps[1, 1] = 1
    else:  # output 2q+1: inputs q-1, q and q+1
        taps[0, 4] = taps[1, 2] = taps[2, 0] = 1
    return taps


def subpixel_weight(deconv_weight: torch.Tensor) -> torch.Tensor:
    """A (Cin, Cout, 5, 5) stride-2 transposed-convolution weight as the (4·Cout, Cin, 3, 3)
    weight of a padding-1 convolution whose ``pixel_shuffle(·, 2)`` gives the same output
    (cropped as TF's 'same' does)."""
    cin, cout = deconv_weight.shape[:2]
    phases = torch.zeros(cout, 2, 2, cin, 3, 3, dtype=deconv_weight.dtype, device=deconv_weight.device)
    for row in (0, 1):
        for col in (0, 1):
            rows, cols = (_phase_taps(p).to(deconv_weight) for p in (row, col))
            phases[:, row, col] = torch.einsum("su,tv,couv->ocst", rows, cols, deconv_weight)
    return phases.reshape(4 * cout, cin, 3, 3)


class SpleeterUNet(nn.Module):
    """One stem's U-Net. Input and output: magnitudes (batch, 2 channels, frames, bins)."""

    def __init__(self, in_channels: int = 2, filters: tuple[int, ...] = ENCODER_FILTERS) -> None:
        super().__init__()
        widths = (in_channels, *filters)
        self.encoder = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 5, stride=2) for i in range(len(filters)))
        self.encoder_norm = nn.ModuleList(nn.BatchNorm2d(f, eps=1e-3) for f in filters)
        # decoder i maps to filters[-2-i] (1 at the end); from the second on its input is a skip concat
        outs = (*filters[-2::-1], 1)
        ins = (filters[-1], *(2 * f for f in filters[-2::-1]))
        self.decoder = nn.ModuleList(nn.ConvTranspose2d(i, o, 5, stride=2) for i, o in zip(ins, outs, strict=True))
        self.decoder_norm = nn.ModuleList(nn.BatchNorm2d(o, eps=1e-3) for o in outs)
        self.mask = nn.Conv2d(1, in_channels, 4, dilation=2)
        # decoder i -> (its weight's identity, derived kernels: a (weight, bias) pair or {phase: kernel})
        self._subpixel: dict[int, tuple] = {}

    def _upsample(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Decoder ``i``'s transposed convolution with TF's 'same' crop, done as ordinary convolutions
        (their weights are derived once per weight tensor and kept until the weights change).

        With several output channels, each of the four output phases is its own small convolution
        (2×2, 2×3, 3×2, 3×3: exactly the transposed kernel's 25 taps) written into its places of
        the output; with a single output channel (the last decoder), one 3×3 convolution with four
        output channels and a pixel shuffle is faster. On this project's 2-core CPU the phases are
        1.3–1.5× faster than the shuffle for the wide layers, and both beat oneDNN's transposed
        convolution."""
        deconv = self.decoder[i]
        key = (deconv.weight.data_ptr(), deconv.weight.dtype, deconv.weight.device, deconv.weight._version)
        cached = self._subpixel.get(i)
        channels_last = torch.channels_last  # oneDNN's fast layout on CPU
        if cached is None or cached[0] != key:
            with torch.no_grad():
                weight = subpixel_weight(deconv.weight)
                cout = deconv.out_channels
                if cout == 1:
                    derived = (weight.contiguous(memory_format=channels_last), deconv.bias.repeat_interleave(4))
                else:
                    phases = weight.reshape(cout, 2, 2, *weight.shape[1:])
                    derived = {
                        (row, col): phases[:, row, col, :, : 2 + row, : 2 + col].contiguous(memory_format=channels_last)
                        for row in (0, 1)
                        for col in (0, 1)
                    }
            self._subpixel[i] = cached = (key, derived)
        derived = cached[1]
        if isinstance(derived, tuple):
            return F.pixel_shuffle(F.conv2d(x, *derived, padding=1), 2)
        batch, _, h, w = x.shape
        out = torch.empty((batch, deconv.out_channels, 2 * h, 2 * w), dtype=x.dtype, device=x.device,
                          memory_format=channels_last)  # fmt: skip
        for (row, col), kernel in derived.items():
            # a 2-tap phase reads inputs q-1, q: padding 1 gives one extra output at the end
            out[:, :, row::2, col::2] = F.conv2d(x, kernel, deconv.bias, padding=1)[:, :, :h, :w]
        return out

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        x = magnitude.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout on CPU
        skips = []
        for i, (conv, norm) in enumerate(zip(self.encoder, self.encoder_norm, strict=True)):
            top, bottom = _same_pad(x.shape[2], 5, 2)
            left, right = _same_pad(x.shape[3], 5, 2)
            conv_out = conv(F.pad(x, (left, right, top, bottom)))
            skips.append(conv_out)  # Spleeter concatenates the pre-norm convolution outputs
            x = F.leaky_relu(norm(conv_out), 0.2, inplace=True) if i < len(self.encoder) - 1 else conv_out
        for i, norm in enumerate(self.decoder_norm):
            x = norm(F.relu(self._upsample(i, x), inplace=True))  # dropout: identity at inference
            if i < len(self.decoder) - 1:
                x = torch.cat([skips[-2 - i], x], dim=1)
        top, bottom = _same_pad(x.shape[2], 4, 1, dilation=2)
        left, right = _same_pad(x.shape[3], 4, 1, dilation=2)
        mask = self.mask(F.pad(x, (left, right, top, bottom))).sigmoid_()
        return mask * magnitude


class Spleeter2Stems(nn.Module):
    """Both U-Nets; ``forward`` returns the soft ratio masks (vocals, accompaniment)."""

    def __init__(self) -> None:
        super().__init__()
        self.vocals = SpleeterUNet()
        self.accompaniment = SpleeterUNet()

    def forward(self, magnitude: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vocals = self.vocals(magnitude).float() ** 2
        accompaniment = self.accompaniment(magnitude).float() ** 2
        total = vocals + accompaniment + EPSILON
        return (vocals + EPSILON / 2) / total, (accompaniment + EPSILON / 2) / total


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_spleeter(weights: str | Path, device: torch.device, half: bool = False,
                  precision: torch.dtype | None = None) -> Spleeter2Stems:  # fmt: skip
    """The model with the converted official weights (safetensors: no code is loaded), to compute in
    ``precision`` (``ml/device.py``; by default float32, or float16 on CUDA with ``half``).

    float16 (CUDA) turns the whole model to float16. bfloat16 runs under ``torch.autocast`` (see
    :class:`SpleeterSeparator`): the convolutions in bfloat16, batch norm and the masks in float32.
    The convolutions' weights are stored in bfloat16 here, once, rather than cast by autocast at
    every chunk (40 MB of weights: the same values either way)."""
    from safetensors.torch import load_file

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"Spleeter weights not found at {weights}: run `make setup` (scripts/setup_spleeter.sh converts them)"
        )
    model = Spleeter2Stems()
    missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        extra = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise ValueError(f"{weights}: not a Spleeter 2-stems weight file ({extra})")
    model = model.eval().to(device, memory_format=torch.channels_last)
    precision = precision or (torch.float16 if half and device.type == "cuda" else torch.float32)
    if precision == torch.float16:
        if device.type != "cuda":
            raise ValueError(f"float16 separation runs on CUDA only, not on {device}")
        return model.half()
    if precision == torch.bfloat16:
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                module.to(torch.bfloat16)
    return model


# --------------------------------------------------------------------------- streaming separation


@dataclass
class _Stream:
    """One file on its way through the network: samples waiting to be framed, overlap carried."""

    key: object
    blocks: Iterator[np.ndarray]  # (n, 2) float32 at 44.1 kHz
    pending: np.ndarray = field(default_factory=lambda: np.zeros((FRAME_LENGTH, 2), np.float32))  # the zero frame
    samples_in: int = 0
    exhausted: bool = False
    chunks_sent: int = 0
    tail: np.ndarray | None = None  # (stems, channels, FRAME_LENGTH - FRAME_STEP) overlap-add carry


@dataclass
class _Chunk:
    stream: _Stream
    index: int
    samples: np.ndarray  # padded samples [index*T*hop, index*T*hop + (T-1)*hop + L)
    keep: tuple[int, int]  # the range of its first T*hop samples that are original samples
    last: bool


@dataclass
class SeparatedBlock:
    """A stretch of one file's stems, in order: ``vocals`` and ``accompaniment`` are (n, 2) float32,
    ``mix`` the matching input samples. ``last`` marks the file's final block."""

    key: object
    vocals: np.ndarray
    accompaniment: np.ndarray
    mix: np.ndarray
    last: bool


def default_batch_chunks(device: torch.device) -> int:
    """Chunks per network call when params say 0 (auto). On CPU one chunk at a time is fastest
    (its activations stay in cache: 1.3× faster than 4 on this project's 2-core machine); a GPU
    wants several, from one or more tracks, to fill it."""
    return 8 if torch.device(device).type == "cuda" else 1


class SpleeterSeparator:
    """Separates files in a stream: chunks of several files share a batch; output comes in blocks."""

    def __init__(self, model: Spleeter2Stems, device: torch.device, batch_chunks: int = 0) -> None:
        self.model = model
        self.device = device
        self.batch_chunks = batch_chunks if batch_chunks > 0 else default_batch_chunks(device)
        # what the model computes in: its convolutions' type (load_spleeter); bfloat16 under autocast
        self.precision = model.vocals.encoder[0].weight.dtype
        self.dtype = torch.float16 if self.precision == torch.float16 else torch.float32  # the network's input
        self.window = torch.hann_window(FRAME_LENGTH, periodic=True, device=device)
        self.synthesis_window = self.window * (2.0 / 3.0)  # Spleeter's inverse STFT scales the overlap-add by 2/3
        self._spectrum: torch.Tensor | None = None

    @staticmethod
    def _next_chunk(stream: _Stream) -> _Chunk:
        """The stream's next 512 frames (zeros past its end); ``last`` once no frame is left."""
        need = (CHUNK_FRAMES - 1) * FRAME_STEP + FRAME_LENGTH
        parts, have = [stream.pending], len(stream.pending)
        while have < need and not stream.exhausted:
            block = next(stream.blocks, None)
            if block is None:
                stream.exhausted = True
                break
            parts.append(block)
            stream.samples_in += len(block)
            have += len(block)
        samples = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if len(samples) < need:
            samples = np.concatenate([samples, np.zeros((need - len(samples), 2), np.float32)])
        index = stream.chunks_sent
        stream.pending = samples[CHUNK_SAMPLES:]
        stream.chunks_sent += 1
        start = index * CHUNK_SAMPLES
        keep_to = CHUNK_SAMPLES
        last = False
        if stream.exhausted:
            # tf.signal.stft(pad_end=True) makes ceil(padded length / hop) frames
            frames_total = -(-(stream.samples_in + FRAME_LENGTH) // FRAME_STEP)
            last = (index + 1) * CHUNK_FRAMES >= frames_total
            keep_to = min(keep_to, FRAME_LENGTH + stream.samples_in - start)
        keep_from = max(FRAME_LENGTH - start, 0)  # the prepended zero frame is not output
        return _Chunk(stream, index, samples[:need], (keep_from, max(keep_to, keep_from)), last)

    def _rfft(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.device.type == "cpu":  # scipy's pocketfft: 1.5-3x torch's here, and no fresh pages per call
            return torch.from_numpy(scipy.fft.rfft(frames.numpy(), axis=-1, workers=torch.get_num_threads()))
        return torch.fft.rfft(frames, dim=-1)

    def _irfft(self, spectrum: torch.Tensor) -> torch.Tensor:
        if spectrum.device.type == "cpu":
            return torch.from_numpy(
                scipy.fft.irfft(spectrum.numpy(), n=FRAME_LENGTH, axis=-1, workers=torch.get_num_threads())
            )
        return torch.fft.irfft(spectrum, n=FRAME_LENGTH, dim=-1)

    def _stem_spectrum(self, batch: int) -> torch.Tensor:
        """The (batch, stems, 2, T, L/2+1) complex buffer the masked spectra are written into. Its
        bins above the network's stay zero (Spleeter's ``mask_extension: zeros``); it is kept from
        batch to batch, so the inverse transform needs no padded copy."""
        shape = (batch, len(STEMS), 2, CHUNK_FRAMES, FRAME_LENGTH // 2 + 1)
        if self._spectrum is None or self._spectrum.shape != shape:
            self._spectrum = torch.zeros(shape, dtype=torch.complex64, device=self.device)
        return self._spectrum

    @torch.inference_mode()
    def _run_batch(self, chunks: list[_Chunk]) -> np.ndarray:
        """Samples -> both stems, overlap-added over each chunk: (batch, stems, channels, span)."""
        x = torch.from_numpy(np.stack([c.samples for c in chunks])).to(self.device).transpose(1, 2)
        frames = x.unfold(-1, FRAME_LENGTH, FRAME_STEP) * self.window  # (B, 2, T, L)
        low = self._rfft(frames)[..., :MODEL_BINS]  # (B, 2, T, F): the bins the network sees
        with autocast(self.device, torch.bfloat16 if self.precision == torch.bfloat16 else torch.float32):
            masks = torch.stack(self.model(low.abs().to(self.dtype)), dim=1)  # (B, stems, 2, T, F), float32
        spectrum = self._stem_spectrum(len(chunks))
        torch.mul(masks, low.unsqueeze(1), out=spectrum[..., :MODEL_BINS])
        stem_frames = self._irfft(spectrum)  # (B, stems, 2, T, L)
        stem_frames *= self.synthesis_window
        # overlap-add: L = 4 hops, so frame j's k-th hop-long block lands on output block j + k
        per_frame = FRAME_LENGTH // FRAME_STEP
        blocks = stem_frames.unflatten(-1, (per_frame, FRAME_STEP))  # (B, stems, 2, T, 4, hop)
        ola = stem_frames.new_zeros((*stem_frames.shape[:3], CHUNK_FRAMES + per_frame - 1, FRAME_STEP))
        for k in range(per_frame):
            ola[:, :, :, k : k + CHUNK_FRAMES] += blocks[..., k, :]
        return ola.flatten(-2).cpu().numpy()

    @staticmethod
    def _emit(chunk: _Chunk, ola: np.ndarray) -> SeparatedBlock:
        """Add the carried overlap; emit the samples no later frame touches; carry the rest."""
        stream = chunk.stream
        overlap = FRAME_LENGTH - FRAME_STEP
        if stream.tail is not None:
            ola[..., :overlap] += stream.tail
        stream.tail = ola[..., CHUNK_SAMPLES:]
        lo, hi = chunk.keep
        return SeparatedBlock(
            key=stream.key,
            vocals=np.ascontiguousarray(ola[0, :, lo:hi].T),
            accompaniment=np.ascontiguousarray(ola[1, :, lo:hi].T),
            mix=chunk.samples[lo:hi],
            last=chunk.last,
        )

    def separate(self, sources: Iterable[tuple[object, Iterable[np.ndarray]]]) -> Iterator[SeparatedBlock]:
        """Separate many files: ``sources`` yields (key, stereo 44.1 kHz float32 blocks). Each
        file's blocks come out in order, the final one with ``last`` set (an empty file gives one
        empty block). Blocks are produced lazily: a file's source is read only as far as needed."""
        sources = iter(sources)
        current: _Stream | None = None
        while True:
            batch: list[_Chunk] = []
            while len(batch) < self.batch_chunks:
                if current is None:
                    nxt = next(sources, None)
                    if nxt is None:
                        break
                    current = _Stream(key=nxt[0], blocks=iter(nxt[1]))
                chunk = self._next_chunk(current)
                batch.append(chunk)
                if chunk.last:
                    current = None
            if not batch:
                return
            ola = self._run_batch(batch)
            for i, chunk in enumerate(batch):
                yield self._emit(chunk, ola[i])


def separate_array(
    separator: SpleeterSeparator, audio: np.ndarray, block: int = 1 << 18
) -> tuple[np.ndarray, np.ndarray]:
    """Separate one in-memory stereo signal (n, 2): returns (vocals, accompaniment)."""
    blocks = (audio[i : i + block].astype(np.float32) for i in range(0, len(audio), block))
    parts = list(separator.separate([(0, blocks)]))
    return np.concatenate([p.vocals for p in parts]), np.concatenate([p.accompaniment for p in parts])
