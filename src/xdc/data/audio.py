"""Log-mel spectrograms in plain torch (no torchaudio, no librosa).

waveform (mono, float) -> hann-windowed STFT -> power spectrum -> triangular mel filters
-> log(mel + eps) -> optional per-spectrogram normalisation.

Frames are centred (`center=True`, zero padding): frame j describes the audio around
`j * hop` seconds from the start of the window, and a window of N samples always gives
`1 + N // hop` frames (`num_audio_frames`), whatever the content.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import DataConfig


LOG_EPS = 1e-6  # floor added before the log: digital silence gives log(1e-6), not -inf
MIN_WINDOW_SAMPLES = 16  # config validation: a shorter STFT window gives a near-constant log-mel


def hz_to_mel(freq, scale: str = "htk"):
    """HTK: 2595·log10(1 + f/700). Slaney: linear below 1 kHz, logarithmic above (librosa's default)."""
    freq = torch.as_tensor(freq, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + freq / 700.0)
    if scale == "slaney":
        linear = freq * 3.0 / 200.0
        log_part = 15.0 + torch.log(freq.clamp_min(1e-10) / 1000.0) / (math.log(6.4) / 27.0)
        return torch.where(freq < 1000.0, linear, log_part)
    raise ValueError(f"mel scale must be 'htk' or 'slaney', got {scale!r}")


def mel_to_hz(mel, scale: str = "htk"):
    mel = torch.as_tensor(mel, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    if scale == "slaney":
        linear = mel * 200.0 / 3.0
        log_part = 1000.0 * torch.exp((mel - 15.0) * (math.log(6.4) / 27.0))
        return torch.where(mel < 15.0, linear, log_part)
    raise ValueError(f"mel scale must be 'htk' or 'slaney', got {scale!r}")


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None, scale: str = "htk") -> torch.Tensor:
    """Triangular filters, n_mels × (n_fft // 2 + 1), peak 1 (no area normalisation).

    Filter m rises from mel point m to m + 1 and falls to m + 2, the n_mels + 2 points being
    equally spaced on the chosen mel scale between f_min and f_max (default: Nyquist).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
    bin_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_points = torch.linspace(float(hz_to_mel(f_min, scale)), float(hz_to_mel(f_max, scale)),
                                n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mel_points, scale)  # n_mels + 2 frequencies in Hz
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_freqs - lower) / (centre - lower)
    falling = (upper - bin_freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).to(torch.float32)


def mel_band_centres(n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None,
                     scale: str = "htk") -> torch.Tensor:
    """Centre frequency (Hz) of each mel filter."""
    f_max = sample_rate / 2 if f_max is None else f_max
    mel_points = torch.linspace(float(hz_to_mel(f_min, scale)), float(hz_to_mel(f_max, scale)),
                                n_mels + 2, dtype=torch.float64)
    return mel_to_hz(mel_points, scale)[1:-1]


def window_samples(cfg: DataConfig) -> int:
    """Samples in the audio window of one clip."""
    return int(round(cfg.audio_window_seconds * cfg.sample_rate))


def hop_samples(sample_rate: int, hop_ms: float) -> int:
    return max(1, int(round(sample_rate * hop_ms / 1000)))


def stft_sizes(sample_rate: int, win_ms: float) -> tuple[int, int]:
    """(window samples, n_fft): the window rounded to samples (at least 2), the FFT size the next
    power of two (faster); the spectrum has n_fft // 2 + 1 frequency bins."""
    win_length = max(2, int(round(sample_rate * win_ms / 1000)))
    return win_length, 1 << (win_length - 1).bit_length()


def num_audio_frames(cfg: DataConfig) -> int:
    """Spectrogram frames of one clip's audio window (centred STFT: 1 + samples // hop)."""
    return 1 + window_samples(cfg) // hop_samples(cfg.sample_rate, cfg.hop_ms)


WHOLE, OVER_TIME = (-2, -1), (-1,)  # a log-mel's dims: the whole spectrogram, each band over the frames
# How each normalisation centres and scales a log-mel: (dims of the mean, dims of the std).
NORMALIZATION_DIMS = {"per_spectrogram": (WHOLE, WHOLE), "per_band": (OVER_TIME, OVER_TIME),
                      "per_band_mean": (OVER_TIME, WHOLE)}
NORMALIZATIONS = (*NORMALIZATION_DIMS, "none")


class LogMel(nn.Module):
    """waveform (..., samples) -> log-mel (..., 1, n_mels, frames).

    normalize: "per_spectrogram" (default) subtracts each spectrogram's mean and divides by its
    std, so recordings of any loudness look alike and digital silence becomes all zeros;
    "per_band" does so for each mel band over the clip's frames (cepstral mean and variance
    normalisation, the speech front-end's remedy for a microphone's colour and stationary noise
    or hum, which otherwise tell recordings apart more than their words do);
    "per_band_mean" removes each band's mean over the frames (cepstral mean normalisation, which
    takes out the same colour and hum) and divides by the whole spectrogram's std: bands that hold
    only noise keep their small spread instead of being stretched to the speech bands' (what
    per_band's variance step does to a short clip);
    "none" keeps the raw log(mel + 1e-6) values.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40, win_ms: float = 25.0,
                 hop_ms: float = 10.0, f_min: float = 0.0, f_max: float | None = None,
                 scale: str = "htk", normalize: str = "per_spectrogram"):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.win_length, self.n_fft = stft_sizes(sample_rate, win_ms)
        self.hop_length = hop_samples(sample_rate, hop_ms)
        self.normalize = normalize
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, self.n_fft, sample_rate, f_min, f_max,
                                                       scale), persistent=False)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "LogMel":
        return cls(cfg.sample_rate, cfg.n_mels, cfg.win_ms, cfg.hop_ms,
                   normalize=cfg.audio_norm)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = torch.as_tensor(waveform, dtype=torch.float32)
        lead = waveform.shape[:-1]
        flat = waveform.reshape(-1, waveform.shape[-1])
        spec = torch.stft(flat, self.n_fft, self.hop_length, self.win_length, self.window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, freqs, frames)
        logmel = torch.log(torch.matmul(self.filters, power) + LOG_EPS)
        if self.normalize != "none":
            mean_dims, std_dims = NORMALIZATION_DIMS[self.normalize]
            centred = logmel - logmel.mean(dim=mean_dims, keepdim=True)
            std = centred.std(dim=std_dims, keepdim=True)
            # A flat spectrogram (digital silence) has no content: zeros, not rounding noise / tiny std.
            logmel = torch.where(std > 1e-4, centred / std.clamp_min(1e-4), torch.zeros_like(centred))
        return logmel.reshape(*lead, 1, *logmel.shape[-2:])


def log_mel(waveform, cfg: DataConfig) -> torch.Tensor:
    """One-off helper: a mono waveform (samples,) -> 1 × n_mels × frames with cfg's settings."""
    return LogMel.from_config(cfg)(waveform)
