"""xdc.training.sizes: settings fitted to the data (`auto` k, the epoch size of a small folder);
the paper's presets keep their numbers."""

from __future__ import annotations

from xdc.config import load_config
from xdc.training.sizes import fit_to_data


def test_cpu_preset_fits_a_small_folder():
    cfg = load_config("cpu")
    assert (cfg.cluster.k_video, cfg.optim.epoch_size, cfg.optim.epoch_passes) == ("auto", 2000, 1)
    fitted, notes = fit_to_data(cfg, 10)
    assert (fitted.cluster.k_video, fitted.cluster.k_audio, fitted.cluster.k_joint) == (2, 2, 2)
    assert fitted.optim.epoch_size == 10  # a pass over 10 videos, not 2000 clips
    assert len(notes) == 2 and "clamp(round(videos / 39), 2, the paper's 64/128/128)" in notes[0]
    assert fit_to_data(fitted, 10) == (fitted, [])  # numbers stay numbers: a relaunch records the same config
    # Plenty of videos: one cluster per 39 up to the paper's k, and the configured epoch size.
    many, _ = fit_to_data(cfg, 3000)
    assert (many.cluster.k_video, many.cluster.k_audio, many.optim.epoch_size) == (64, 77, 2000)
    kinetics, _ = fit_to_data(cfg, 240_000)
    assert (kinetics.cluster.k_video, kinetics.cluster.k_audio, kinetics.cluster.k_joint) == (64, 128, 128)


def test_paper_presets_keep_their_numbers():
    cfg = load_config("dc_kinetics")
    assert fit_to_data(cfg, 8) == (cfg, [])
    assert (cfg.cluster.k_video, cfg.cluster.k_audio, cfg.optim.epoch_passes) == (64, 128, 0)
