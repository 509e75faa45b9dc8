"""xdc.data.audio: the log-mel spectrogram: mel scale, filterbank, known tones, frame count,
normalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xdc.config import DataConfig
from xdc.data.audio import (LogMel, hz_to_mel, log_mel, mel_band_centres, mel_filterbank, mel_to_hz,
                            num_audio_frames)

RATE = 16000


def tone(freq: float, seconds: float, rate: int = RATE) -> torch.Tensor:
    return 0.5 * torch.sin(2 * math.pi * freq * torch.arange(int(seconds * rate)) / rate)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_scale_round_trip_and_known_points(scale):
    freqs = torch.tensor([0.0, 200.0, 1000.0, 4000.0, 8000.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(freqs, scale), scale), freqs, atol=1e-6)
    mels = hz_to_mel(freqs, scale)
    assert torch.all(mels[1:] > mels[:-1])
    # 1 kHz is 1000 mel on the HTK scale and 15 "mel" (the linear/log knee) on Slaney's.
    assert float(hz_to_mel(1000.0, scale)) == pytest.approx(999.99 if scale == "htk" else 15.0, abs=0.01)


def test_mel_scale_rejects_unknown_name():
    with pytest.raises(ValueError, match="htk"):
        hz_to_mel(100.0, "bark")


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_filterbank_shape_and_triangles(scale):
    filters = mel_filterbank(40, 512, RATE, scale=scale)
    assert filters.shape == (40, 257)
    assert filters.min() >= 0 and filters.max() <= 1 + 1e-6
    assert torch.all(filters.sum(1) > 0), "every mel band must cover at least one FFT bin"
    peaks = filters.argmax(1)
    assert torch.all(peaks[1:] >= peaks[:-1]), "band centres rise with the band index"


def test_filterbank_rejects_bad_range():
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(40, 512, RATE, f_min=0, f_max=9000)


@pytest.mark.parametrize("freq", [1000.0, 3000.0])
@pytest.mark.parametrize("normalize", ["none", "per_spectrogram"])  # per_band flattens a steady tone
def test_sine_peaks_in_its_mel_band(freq, normalize):
    spec = LogMel(RATE, n_mels=40, normalize=normalize)(tone(freq, 0.5))
    band = int(spec[0].mean(-1).argmax())
    centres = mel_band_centres(40, RATE)
    expected = int((centres - freq).abs().argmin())
    assert abs(band - expected) <= 1 if freq > 2000 else band == expected
    # The band's filter actually passes the tone's frequency.
    module = LogMel(RATE, n_mels=40)
    bin_index = round(freq / (RATE / module.n_fft))
    assert module.filters[band, bin_index] > 0.3


def test_two_tones_land_in_the_right_frames():
    hop_ms = 10.0
    wave = torch.zeros(RATE)  # one second
    wave[int(0.2 * RATE):int(0.4 * RATE)] = tone(500, 0.2)
    wave[int(0.6 * RATE):int(0.8 * RATE)] = tone(3000, 0.2)
    spec = LogMel(RATE, n_mels=40, hop_ms=hop_ms, normalize="none")(wave)[0]  # n_mels × frames
    centres = mel_band_centres(40, RATE)
    low, high = int((centres - 500).abs().argmin()), int((centres - 3000).abs().argmin())
    frame_time = torch.arange(spec.shape[1]) * hop_ms / 1000  # centred frames
    loudest = spec.argmax(0)
    inside_low = (frame_time > 0.22) & (frame_time < 0.38)
    inside_high = (frame_time > 0.62) & (frame_time < 0.78)
    assert torch.all((loudest[inside_low] - low).abs() <= 1)
    assert torch.all((loudest[inside_high] - high).abs() <= 1)
    energy = spec.exp().sum(0)
    silent = (frame_time < 0.17) | ((frame_time > 0.43) & (frame_time < 0.57)) | (frame_time > 0.83)
    assert energy[silent].max() < 1e-3 * energy[inside_low].min()


@pytest.mark.parametrize("overrides", [{}, {"frames": 16, "fps": 10.0}, {"audio_seconds": 2.5, "hop_ms": 12.5},
                                       {"sample_rate": 22050, "win_ms": 32.0, "n_mels": 64}])
def test_frame_count_is_fixed_by_the_window(overrides):
    cfg = DataConfig(**overrides)
    samples = int(round(cfg.audio_window_seconds * cfg.sample_rate))
    rng = np.random.default_rng(0)
    for wave in (torch.zeros(samples), torch.from_numpy(rng.standard_normal(samples).astype(np.float32))):
        out = log_mel(wave, cfg)
        assert out.shape == (1, cfg.n_mels, num_audio_frames(cfg))
        assert torch.isfinite(out).all()


def test_per_spectrogram_normalisation():
    module = LogMel(RATE, normalize="per_spectrogram")
    noise = module(0.01 * torch.randn(RATE))
    assert float(noise.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(noise.std()) == pytest.approx(1.0, abs=1e-3)
    louder = module(0.01 * 50 * torch.randn(RATE, generator=torch.Generator().manual_seed(1)))
    assert float(louder.mean()) == pytest.approx(0.0, abs=1e-4)
    silence = module(torch.zeros(RATE))
    assert torch.count_nonzero(silence) == 0, "digital silence normalises to all zeros"
    raw_silence = LogMel(RATE, normalize="none")(torch.zeros(RATE))
    assert torch.allclose(raw_silence, torch.full_like(raw_silence, math.log(1e-6)))


@pytest.mark.parametrize("per_band", ["per_band", "per_band_mean"])
def test_per_band_normalisation_removes_a_stationary_hum(per_band):
    """A recording's constant hum (a channel's colour) is gone after per-band normalisation:
    the same tone burst under two different hums gives nearly the same log-mel, which it does
    not with per_spectrogram."""
    burst = torch.zeros(RATE)
    burst[int(0.3 * RATE):int(0.6 * RATE)] = tone(1500, 0.3)
    t = torch.arange(RATE) / RATE
    hums = [0.05 * torch.sin(2 * math.pi * 120 * t), 0.05 * torch.sin(2 * math.pi * 4000 * t)]
    noise = 1e-3 * torch.randn(RATE, generator=torch.Generator().manual_seed(0))
    gaps = {}
    for normalize in ("per_spectrogram", per_band):
        module = LogMel(RATE, normalize=normalize)
        a, b = (module(burst + hum + noise)[0] for hum in hums)
        gaps[normalize] = float((a - b).abs().mean())
    normalised = LogMel(RATE, normalize=per_band)(burst + hums[0] + noise)[0]
    assert torch.allclose(normalised.mean(-1), torch.zeros(normalised.shape[0]), atol=1e-4)
    assert gaps[per_band] < 0.5 * gaps["per_spectrogram"], gaps


def test_per_band_mean_keeps_noise_bands_small():
    """per_band stretches every band to std 1, a band of faint noise as much as the band of a
    word; per_band_mean divides by one std for the whole spectrogram, so the burst's band keeps
    a wider spread than the bands that hold only noise."""
    burst = torch.zeros(RATE)
    burst[int(0.3 * RATE):int(0.6 * RATE)] = tone(1000, 0.3)
    noisy = burst + 1e-3 * torch.randn(RATE, generator=torch.Generator().manual_seed(0))
    spreads = {n: LogMel(RATE, normalize=n)(noisy)[0].std(-1) for n in ("per_band", "per_band_mean")}
    assert torch.allclose(spreads["per_band"], torch.ones_like(spreads["per_band"]), atol=1e-3)
    kept = spreads["per_band_mean"]
    assert float(kept.max()) > 3 * float(kept.median()), kept


def test_batched_input_matches_one_by_one():
    module = LogMel(RATE)
    waves = torch.stack([tone(700, 0.3), tone(2000, 0.3)])
    batched = module(waves)
    assert batched.shape[:2] == (2, 1)
    assert torch.allclose(batched[1], module(waves[1]), atol=1e-5)


def test_bad_normalisation_name():
    with pytest.raises(ValueError, match="per_spectrogram"):
        LogMel(RATE, normalize="global")
