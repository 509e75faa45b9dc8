"""The frozen encoder's clip features of every subset, computed once per folder (`features.pt`) and
shared by the modes that train nothing through the encoder (linear, knn, retrieval).

`features.pt` records the key of what it was made from (the encoder's weights, the modality,
each subset's rows, the clip settings): a file made from anything else is extracted again, never
reused, whichever folder it was copied from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import torch
from torch import nn

from xdc.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xdc.clustering.features import clip_features
from xdc.config import FinetuneConfig
from xdc.data.datasets import clip_loader
from xdc.evaluation.finetune_folder import FinetuneFolder
from xdc.evaluation.labelled import make_dataset

# Data settings that change how files are read, not the clips: not part of the key.
NOT_IN_KEY = ("num_workers", "cache_dir", "check_files")


def videos_per_batch(cfg: FinetuneConfig) -> int:
    return max(1, cfg.optim.batch_size // cfg.data.eval_clips)


def eval_features(encoder: nn.Module, rows: list[dict], cfg: FinetuneConfig, modality: str, device: torch.device,
                  desc: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(features V×N×D, dataset index of each of the V videos decoded, skipped) of `rows`: their
    `data.eval_clips` uniformly spaced clips, centre crops (`clustering.features.clip_features`)."""
    loader = clip_loader(make_dataset(rows, cfg, modality, "eval"), batch_size=videos_per_batch(cfg),
                         num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
    return clip_features(encoder, loader, modality, device, cfg.amp, desc)


def features_key(encoder_digest: str, modality: str, subsets: dict[str, list[dict]], cfg: FinetuneConfig) -> str:
    """A digest of what the cached features depend on."""
    data = {key: value for key, value in asdict(cfg.data).items() if key not in NOT_IN_KEY}
    digest = hashlib.sha1(json.dumps({"encoder": encoder_digest, "modality": modality, "amp": cfg.amp,
                                      "data": data}, sort_keys=True, default=str).encode())
    for name in sorted(subsets):
        digest.update(name.encode())
        for row in subsets[name]:
            digest.update(f"{row['path']}\n".encode())
    return digest.hexdigest()[:16]


def cached_features(encoder: nn.Module, subsets: dict[str, list[dict]], cfg: FinetuneConfig, modality: str,
                    device: torch.device, folder: FinetuneFolder, key: str) -> dict:
    """Frozen-encoder features of every subset (`<name>`: V×N×D, `<name>_index`: the dataset
    index of each of the V videos decoded, `skipped`), kept in `features.pt` with `key`
    (`features_key`), and read back from there when it was made with the same key."""
    if folder.features.is_file():
        try:
            state = load_checkpoint(folder.features)
        except CheckpointError:
            state = {}  # unreadable (or refused): made again below, never loaded unsafely
        if isinstance(state, dict) and state.get("made_from") == key:
            print(f"  reusing {folder.features.name} (same encoder, rows and clip settings)", flush=True)
            return {**state, "skipped": json.loads(state["skipped"])}
        print(f"  {folder.features.name} was made from another encoder, other rows or clip settings (or is "
              f"unreadable): extracting again", flush=True)
    state, skipped = {}, {}
    for name, rows in subsets.items():
        state[name], state[f"{name}_index"], skipped[name] = eval_features(encoder, rows, cfg, modality, device,
                                                                           f"{name} features")
    save_checkpoint({**state, "skipped": json.dumps(skipped), "made_from": key}, folder.features)
    return {**state, "skipped": skipped, "made_from": key}
