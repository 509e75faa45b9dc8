"""xdc.data.decode: windows decoded from real files: shapes, rotation, streams, timing, short videos,
errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import av
import numpy as np
import pytest

from xdc.config import DataConfig
from xdc.data.audio import LogMel, mel_band_centres
from xdc.data.decode import DecodeError, decode_clip, decode_clips, media_duration
from xdc.data.encode import write_video

CFG = DataConfig(frames=4, fps=8.0, short_side=64, crop=56)
FLASH_TIME = 1.0  # seconds; the alignment clip flashes white and beeps here
FLASH_FPS = 24.0
BEEP_HZ = 1000.0


def make_flash_beep(path, seconds: float = 3.0, fps: float = FLASH_FPS, rate: int = 16000):
    """A real MP4: grey frames with one white frame at FLASH_TIME, and a 1 kHz beep lasting that
    frame, over faint noise."""
    frames = np.full((int(seconds * fps), 48, 64, 3), 40, np.uint8)
    frames[round(FLASH_TIME * fps)] = 255
    rng = np.random.default_rng(0)
    audio = 0.003 * rng.standard_normal(int(seconds * rate))
    beep = slice(int(FLASH_TIME * rate), int((FLASH_TIME + 1 / fps) * rate))
    audio[beep] += 0.5 * np.sin(2 * np.pi * BEEP_HZ * np.arange(beep.stop - beep.start) / rate)
    return write_video(path, frames, fps, audio, rate)


def flash_and_beep_times(video: np.ndarray, audio: np.ndarray, cfg: DataConfig, start: float):
    """Absolute times (s) of the brightest clip frame and of the loudest 1 kHz spectrogram frame."""
    flash_frame = int(video.reshape(video.shape[0], -1).mean(1).argmax())
    spec = LogMel(cfg.sample_rate, cfg.n_mels, cfg.win_ms, cfg.hop_ms, normalize="none")(audio)[0]
    band = int((mel_band_centres(cfg.n_mels, cfg.sample_rate) - BEEP_HZ).abs().argmin())
    beep_frame = int(spec[band].argmax())
    audio_start = start + cfg.clip_seconds / 2 - cfg.audio_window_seconds / 2
    return start + flash_frame / cfg.fps, audio_start + beep_frame * cfg.hop_ms / 1000


def test_flash_and_beep_stay_aligned(tmp_path):
    path = make_flash_beep(tmp_path / "flash.mp4")
    cfg = dataclasses.replace(CFG, frames=24, fps=FLASH_FPS, audio_seconds=1.5)
    for start in (0.3, 0.5, 0.9):
        clip = decode_clip(path, start, cfg)
        flash, beep = flash_and_beep_times(clip.video, clip.audio, cfg, start)
        # Clip frames sample the 24-fps source at start + k/24: the flash shows within one frame.
        assert FLASH_TIME <= flash < FLASH_TIME + 1 / FLASH_FPS, f"start {start}: flash at {flash}"
        # The beep lasts one frame (41.7 ms); its loudest spectrogram frame is inside it.
        assert FLASH_TIME - 0.005 <= beep <= FLASH_TIME + 1 / FLASH_FPS + 0.005, f"start {start}: beep at {beep}"
        assert abs(beep - flash) <= 1 / FLASH_FPS
        # Sample-accurate too: the waveform's onset is where the beep was written.
        onset = int(np.argmax(np.abs(clip.audio) > 0.1))
        audio_start = start + cfg.clip_seconds / 2 - cfg.audio_window_seconds / 2
        assert audio_start + onset / cfg.sample_rate == pytest.approx(FLASH_TIME, abs=2e-3)


def test_frames_are_picked_by_timestamp(tmp_path):
    # Source frames numbered by brightness; a clip at 8 fps must show every third source frame.
    fps, count = 24.0, 48
    frames = np.repeat(np.arange(0, count * 5, 5, dtype=np.uint8)[:, None, None, None], 48 * 64 * 3)
    path = write_video(tmp_path / "ramp.mp4", frames.reshape(count, 48, 64, 3), fps, crf=0)
    cfg = dataclasses.replace(CFG, frames=8, fps=8.0)
    clip = decode_clip(path, 0.5, cfg, with_audio=False)
    seen = np.round(clip.video.reshape(8, -1).mean(1) / 5).astype(int)
    expected = [round((0.5 + k / 8) * fps) for k in range(8)]
    assert seen.tolist() == expected
    assert clip.audio is None


def test_several_windows_in_one_pass_equal_separate_decodes(shared_videos):
    path = shared_videos / "mmaction2__test.mp4"
    starts = [7.5, 0.0, 2.25, 5.0, 8.9]  # unsorted on purpose; 0 -> 7.5 spans a seek
    together = decode_clips(path, starts, CFG)
    assert [c.start for c in together] == starts
    for clip, start in zip(together, starts):
        alone = decode_clip(path, start, CFG)
        np.testing.assert_array_equal(clip.video, alone.video)
    assert together[0].video.shape == (CFG.frames, 64, 85, 3)
    assert not np.array_equal(together[0].video, together[1].video)


def full_decode_pick(path, starts, cfg: DataConfig) -> list[np.ndarray]:
    """Clips the slow way: decode every frame from the file's start, pick by timestamp."""
    last = max(starts) + cfg.clip_seconds
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        times, frames = [], []
        for frame in container.decode(stream):
            times.append(frame.time)
            frames.append(frame)
            if frame.time > last:
                break
        clips = []
        for start in starts:
            picks = np.searchsorted(np.array(times), start + np.arange(cfg.frames) / cfg.fps + 1e-3, "right") - 1
            scale = cfg.short_side / min(frames[0].width, frames[0].height)
            size = dict(width=round(frames[0].width * scale), height=round(frames[0].height * scale))
            clips.append(np.stack([frames[max(i, 0)].reformat(**size, format="rgb24", interpolation="BILINEAR")
                                   .to_ndarray() for i in picks]))
    return clips


@pytest.mark.parametrize("name, starts", [
    ("mmaction2__test.mp4", [0.2, 4.0, 8.1]),  # B-frames: non-reference frames skipped before the window
    ("imageio__cockatoo.mp4", [4.1]),  # its flagged keyframe at 3.8 s does not decode alone
    ("moviepy__no_duration.webm", [1.0, 3.9]),  # VP9
])
def test_seeking_gives_the_frames_of_a_full_decode(shared_videos, name, starts):
    path = shared_videos / name
    for start, expected in zip(starts, full_decode_pick(path, starts, CFG)):
        np.testing.assert_array_equal(decode_clip(path, start, CFG, with_audio=False).video, expected,
                                      err_msg=f"{name} at {start} s")


@pytest.mark.parametrize("name, rotated", [("decord__video_0.mov", False), ("decord__video_90.mov", True),
                                           ("decord__video_180.mov", False),
                                           ("decord__video_270.mov", True)])
def test_rotated_clips_come_out_upright(shared_videos, name, rotated):
    clip = decode_clip(shared_videos / name, 0.0, CFG)
    height, width = clip.video.shape[1:3]
    assert min(height, width) == CFG.short_side
    assert (height > width) == rotated  # coded 568×320 landscape; ±90° displays portrait


def test_rotation_direction_matches_display_matrix(shared_videos):
    # video_90.mov's display matrix says -90 (counter-clockwise), i.e. turn it 90° clockwise;
    # checked by eye: the key labels read upright only this way.
    path = shared_videos / "decord__video_90.mov"
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        assert frame.rotation == -90
        coded = frame.reformat(width=114, height=64, format="rgb24", interpolation="BILINEAR").to_ndarray()
    clip = decode_clip(path, 0.0, CFG)
    np.testing.assert_array_equal(clip.video[0], np.rot90(coded, -1))


def test_first_streams_by_default_and_configurable(shared_videos):
    path = shared_videos / "torchcodec__nasa_13013.mp4"  # video streams #0, #3; audio #1 (8 kHz), #4 (16 kHz)
    first = decode_clip(path, 2.0, CFG)
    second = decode_clip(path, 2.0, dataclasses.replace(CFG, video_stream=1, audio_stream=1))
    with av.open(str(path)) as container:
        expected = [next(container.decode(stream)).reformat(width=114, height=64, format="rgb24",
                                                           interpolation="BILINEAR").to_ndarray()
                    for stream in (container.streams.video[0], container.streams.video[1])]
    np.testing.assert_array_equal(decode_clip(path, 0.0, CFG).video[0], expected[0])
    assert not np.array_equal(expected[0], expected[1])

    def high_share(audio):  # share of energy above 4.2 kHz: none in the 8 kHz stream
        spectrum = np.abs(np.fft.rfft(audio)) ** 2
        return spectrum[np.fft.rfftfreq(audio.size, 1 / CFG.sample_rate) > 4200].sum() / spectrum.sum()

    assert high_share(first.audio) < 1e-3 < high_share(second.audio)
    with pytest.raises(DecodeError, match="video_stream=2"):
        decode_clip(path, 0.0, dataclasses.replace(CFG, video_stream=2))


@pytest.mark.parametrize("name, seconds", [("imageio__test.webm", 3.1), ("moviepy__no_duration.webm", 4.9)])
def test_webm_without_container_duration(shared_videos, name, seconds):
    path = shared_videos / name
    duration = media_duration(path)
    assert duration == pytest.approx(seconds, abs=0.1)
    clips = decode_clips(path, [0.0, duration - CFG.clip_seconds], CFG)
    assert all(c.video.shape[0] == CFG.frames and min(c.video.shape[1:3]) == 64 for c in clips)
    assert not np.array_equal(clips[0].video, clips[1].video)


def test_short_video_loops_or_pads(shared_videos):
    path = shared_videos / "imageio__realshort.mp4"  # 1.2 s
    cfg = dataclasses.replace(CFG, frames=8, fps=4.0)  # a 2-s clip
    looped = decode_clip(path, 0.0, cfg).video
    padded = decode_clip(path, 0.0, dataclasses.replace(cfg, short_video="pad")).video
    np.testing.assert_array_equal(looped[:5], padded[:5])  # t = 0 .. 1.0 s exist in the file
    assert all(np.array_equal(padded[k], padded[5]) for k in range(6, 8)), "pad holds the last frame"
    # Looped frames (t = 1.25, 1.5, 1.75 s) wrap to 0.05, 0.3, 0.55 s of the file.
    beginning = decode_clip(path, 0.0, dataclasses.replace(cfg, frames=48, fps=60.0)).video
    for k in range(5, 8):
        assert any(np.array_equal(looped[k], early) for early in beginning), f"frame {k} not looped"
    assert not np.array_equal(looped[7], padded[7])


def test_long_video_overshooting_its_end_holds_the_last_frame(shared_videos):
    path = shared_videos / "mmaction2__part_0.mp4"  # 1.07 s: longer than a 0.5-s clip
    clip = decode_clip(path, 0.9, CFG).video  # targets 0.9 .. 1.275 s
    assert all(np.array_equal(clip[k], clip[2]) for k in (2, 3))
    assert not np.array_equal(clip[0], clip[3])


def test_audio_window_is_exact_and_padded_past_the_end(shared_videos):
    path = shared_videos / "moviepy__chaplin.mp4"  # 9.64 s, stereo 44.1 kHz
    cfg = dataclasses.replace(CFG, audio_seconds=2.0)
    inside = decode_clip(path, 4.0, cfg).audio
    assert inside.dtype == np.float32 and inside.shape == (32000,)
    assert np.abs(inside).max() > 0.05
    tail = decode_clip(path, 9.4, cfg).audio  # window 8.65 .. 10.65 s, the file ends at 9.64 s
    assert tail.shape == (32000,)
    assert np.abs(tail[-8000:]).max() == 0  # the last 0.5 s is past the end: zeros
    assert np.abs(tail[:8000]).max() > 0


@pytest.mark.parametrize("content, what", [(b"", "cannot open"), (b"this is not a video\n" * 50, "cannot open")])
def test_unreadable_files_raise_decode_error(tmp_path, content, what):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=what) as info:
        decode_clip(path, 0.0, CFG)
    assert info.value.path == str(path)


def test_truncated_file_raises_decode_error(tmp_path, clip_factory):
    whole = clip_factory("whole.mp4", seconds=2.0).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(DecodeError, match=str(cut.name)):
        decode_clip(cut, 0.5, CFG)


def test_truncated_matroska_decodes_up_to_the_cut(tmp_path, clip_factory):
    whole = clip_factory("whole.mkv", seconds=3.0).read_bytes()  # Matroska: header first
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole[: len(whole) // 2])
    assert decode_clip(cut, 0.2, CFG).video.shape[0] == CFG.frames
    with pytest.raises(DecodeError, match="past the end of the video"):
        decode_clip(cut, 2.4, CFG)


def test_audio_only_file_has_no_video_stream(shared_videos):
    with pytest.raises(DecodeError, match="no video stream"):
        decode_clip(shared_videos / "mmaction2__test.wav", 0.0, CFG)


def test_the_decoder_does_not_know_the_cache(clip_factory, tmp_path):
    """`cache` reads files through `decode`, never the reverse: a config naming a cache changes
    nothing in decoding (the dataset asks the cache), and decoding never imports it."""
    from xdc.data.cache import build_cache
    from xdc.data.scan import probe_file

    path = clip_factory("a.mp4", seconds=2.0)
    build_cache([probe_file(path)], CFG, tmp_path / "cache", progress=False)
    code = ("import sys; from xdc.config import DataConfig; from xdc.data.decode import decode_clips; "
            "cfg = DataConfig(frames=4, fps=8.0, short_side=64, crop=56, cache_dir=sys.argv[2]); "
            "print(decode_clips(sys.argv[1], [0.3], cfg)[0].start, 'xdc.data.cache' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0.3", "False"]  # the cache would have snapped 0.3 s to 0.25 s
