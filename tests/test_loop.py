"""xdc.training.loop: `train_one_epoch` and `validation_loss` on real clips and encoders, called
directly: skipped samples counted (and the schedule advanced for a batch with nothing to train on),
the first non-finite loss stopping the epoch with one line, and one line too when no held-out video
decodes. (`PretrainModel`'s heads and losses per method: test_methods.py; the loop inside a whole
`xdc pretrain`: test_pretrain.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, broken_copy
from torch.utils.data import Subset

from xdc.config import load_config
from xdc.data.datasets import AudioVideoClips, clip_loader
from xdc.data.manifest import read_manifest
from xdc.errors import XdcError
from xdc.methods import get_method
from xdc.models import audio_encoder, video_encoder
from xdc.training.loop import (
    LOG_EVERY,
    NonFiniteLossError,
    NoValidationVideosError,
    PretrainModel,
    train_one_epoch,
    validation_loss,
)
from xdc.training.schedule import make_scheduler


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_training_loop_counts_skipped_samples(av_manifest, tmp_path):
    cfg = load_config(TINY)
    rows = read_manifest(broken_copy(av_manifest, tmp_path, broken=2))
    specs = get_method("xdc").heads(cfg.cluster)
    model = PretrainModel(video_encoder("r2plus1d_18", 8), audio_encoder(8))
    model.reset_heads(specs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = make_scheduler(optimizer, cfg.optim, 2)
    dataset = AudioVideoClips(rows, cfg.data, mode="train")
    # Two batches: the first only the two broken videos (no step), the second all good ones.
    order = Subset(dataset, [0, 1, 2, 3, 4, 5])
    loader = clip_loader(order, batch_size=2, sampler=list(range(4)))
    labels = {"video": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), "audio": torch.tensor([3, 2, 1, 0] * 2)}
    before = [p.detach().clone() for p in model.video_encoder.parameters()]
    stats = train_one_epoch(model, specs, loader, labels, optimizer, scheduler, torch.device("cpu"),
                            amp=False)
    assert stats["skipped"] == 2 and stats["clips"] == 2
    assert "2 samples skipped (2 videos)" in stats["skip_summary"]
    assert scheduler.last_epoch == 2  # the schedule advanced for the skipped batch too
    assert any(not torch.equal(a, b) for a, b in zip(before, model.video_encoder.parameters()))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_training_stops_at_the_first_non_finite_loss(av_manifest):
    """A clip holding inf (the second batch's) makes the video head's loss NaN: the epoch stops at
    the next reduction with one line naming the epoch, the SGD step and the head."""
    cfg = load_config(TINY)
    specs = get_method("xdc").heads(cfg.cluster)
    model = PretrainModel(video_encoder("r2plus1d_18", 4), audio_encoder(4))
    model.reset_heads(specs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = make_scheduler(optimizer, cfg.optim, 4)
    dataset = AudioVideoClips(read_manifest(av_manifest), cfg.data, mode="train")
    batches = list(clip_loader(dataset, batch_size=2, sampler=[0, 1, 2, 3, 4, 5, 6, 7]))
    batches[1]["video"][0] = float("inf")
    labels = {"video": torch.tensor([0, 1, 2, 3] * 2), "audio": torch.tensor([3, 2, 1, 0] * 2)}
    assert len(batches) < LOG_EVERY  # found by the reduction at the epoch's end
    with pytest.raises(NonFiniteLossError) as caught:
        train_one_epoch(model, specs, batches, labels, optimizer, scheduler, torch.device("cpu"), amp=False,
                        description="iteration 0 epoch 1/2")
    message = str(caught.value)
    assert isinstance(caught.value, XdcError) and "\n" not in message
    assert message.startswith("iteration 0 epoch 1/2, SGD step 2: the training loss of head video_to_audio is "
                              "not a finite number"), message
    assert "lower optim.lr" in message and "check the input files" in message


def test_validation_with_no_decodable_video_is_one_line(av_manifest, tmp_path):
    """Held-out videos that all fail to decode (files broken after the scan): the validation loss
    is undefined, said in one line with what to do, not a traceback."""
    cfg = load_config(TINY)
    rows = read_manifest(broken_copy(av_manifest, tmp_path, broken=2))
    specs = get_method("xdc").heads(cfg.cluster)
    model = PretrainModel(video_encoder("r2plus1d_18", 4), audio_encoder(4))
    model.reset_heads(specs)
    held_out = Subset(AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=1), [0, 1])  # the broken two
    labels = {"video": torch.tensor([0, 1, 2, 3] * 2), "audio": torch.tensor([3, 2, 1, 0] * 2)}
    with pytest.raises(NoValidationVideosError) as caught:
        validation_loss(model, specs, clip_loader(held_out, batch_size=2), labels, torch.device("cpu"), amp=False)
    message = str(caught.value)
    assert isinstance(caught.value, XdcError) and "\n" not in message
    assert "2 samples skipped (2 videos)" in message and "optim.early_stop=false" in message
