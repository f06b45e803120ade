"""The video-folder dataset on real files written here with OpenCV: timing, sizes, damage, captions, determinism."""
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pfp_core import limits
from pfp_core.training import procedural
from pfp_core.cli import main
from pfp_core.training.loop import TrainSettings, train
from pfp_core.training.video_dataset import VideoFolder, folder_captions, read_clip
from pfp_core.video_io import write_video

BITS = 10  # a frame shows its timestamp in centiseconds as 10 black/white 8x8 blocks: robust to a lossy codec


def clock_frames(times: np.ndarray) -> np.ndarray:
    """uint8 [T, 16, 80, 3]: frame i shows round(times[i] * 100) in binary on its top row of blocks."""
    frames = np.full((len(times), 16, 8 * BITS, 3), 128, np.uint8)
    for frame, t in zip(frames, times):
        code = round(t * 100)
        for bit in range(BITS):
            frame[:8, 8 * bit:8 * bit + 8] = 225 if code >> bit & 1 else 30
    return frames


def read_clock(frame: np.ndarray) -> int:
    return sum(1 << bit for bit in range(BITS) if frame[:8, 8 * bit:8 * bit + 8].mean() > 128)


def on_screen(source_times: np.ndarray, t: float) -> int:
    """The clock of the last source frame shown at or before t."""
    return round(source_times[source_times <= t + 1e-6][-1] * 100)


def retime_mp4(path, deltas: list[int]) -> None:
    """Rewrite an mp4's time-to-sample table (moov/trak/mdia/minf/stbl/stts) with one duration per frame: a real
    variable-frame-rate file. OpenCV writes the index after the data, so no data offset moves."""
    data = bytearray(path.read_bytes())
    parents, start, end = [], 0, len(data)
    for name in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stts"):
        while data[start + 4:start + 8] != name:
            start += struct.unpack(">I", data[start:start + 4])[0]
        parents.append(start)
        start, end = start + 8, start + struct.unpack(">I", data[start:start + 4])[0]
    stts = parents.pop()
    body = struct.pack(">II", 0, len(deltas)) + b"".join(struct.pack(">II", 1, d) for d in deltas)
    old_size = end - stts
    data[stts:end] = struct.pack(">I4s", 8 + len(body), b"stts") + body
    for box in parents:
        struct.pack_into(">I", data, box, struct.unpack(">I", data[box:box + 4])[0] + 8 + len(body) - old_size)
    path.write_bytes(bytes(data))


def write_with(path, fourcc: str, frames: np.ndarray, fps: float) -> bool:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, frames.shape[2:0:-1])
    if not writer.isOpened():
        return False
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path.stat().st_size > 0


def folder(root, fps=8, size=16, min_frames=8, **kwargs) -> VideoFolder:
    return VideoFolder(root, fps, size, size, min_frames, **kwargs)


def procedural_video(path, frames=40, fps=8, seed=0, size=32):
    return write_video(procedural.make_video(seed, frames, size, fps).frames, path, fps)


@pytest.mark.parametrize("source_fps", [24, 5, 30])
def test_clips_sample_by_timestamps_so_any_source_fps_gives_the_right_seconds(tmp_path, source_fps):
    source_times = np.arange(6 * source_fps) / source_fps
    write_video(clock_frames(source_times), tmp_path / "clock.mp4", source_fps)
    video = folder(tmp_path).videos[0]
    assert video.frames == int(source_times[-1] * 8 + 1e-6) + 1  # whole 8 fps frames up to the last source frame
    for first in (3, 30):  # near the start, and after a seek into the file
        clip = read_clip(video, first, 16, 8, 16, 80)
        assert [read_clock(f) for f in clip] == [on_screen(source_times, (first + k) / 8) for k in range(16)]


# Written at 10 fps (1024 ticks a frame), retimed with the same total so the headers stay true.
VARIABLE_RATES = {  # name: (ticks per frame, first clip frame at 8 fps)
    "20, 2.5 then 10 fps": ([512] * 10 + [2048] * 5 + [1024] * 5, 0),
    # a clip starting at 3 s inside a 1.6 s gap: a seek to 1 s before lands after the start, so it is read from 0
    "1.6 s gap, then 20 fps": ([16384] * 2 + [512] * 60, 24),
}


@pytest.mark.parametrize("rates", VARIABLE_RATES)
def test_variable_frame_rate_file_is_sampled_by_its_real_timestamps(tmp_path, rates):
    ticks, first = VARIABLE_RATES[rates]
    source_times = np.concatenate([[0], np.cumsum(ticks)[:-1]]) / 10240
    retime_mp4(write_video(clock_frames(source_times), tmp_path / "vfr.mp4", 10), ticks)
    video = folder(tmp_path).videos[0]
    assert video.frames == int(source_times[-1] * 8 + 1e-6) + 1
    clip = read_clip(video, first, 16, 8, 16, 80)
    assert [read_clock(f) for f in clip] == [on_screen(source_times, (first + k) / 8) for k in range(16)]


def test_damaged_and_short_files_are_skipped_with_one_warning_each_and_counted(tmp_path, capsys):
    procedural_video(tmp_path / "good.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    whole = procedural_video(tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) is cut off
    (tmp_path / "whole.mp4").unlink()
    procedural_video(tmp_path / "short.mp4", frames=5)
    videos = folder(tmp_path)
    assert [v.path.name for v in videos.videos] == ["good.mp4"]
    assert sorted((p.name, reason) for p, reason in videos.skipped) == [
        ("corrupt.mp4", "unreadable"), ("short.mp4", "too short"), ("truncated.mp4", "unreadable")]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and lines[-1] == "--data: 1 videos usable, 3 skipped: 1 too short, 2 unreadable"
    for name in ("corrupt.mp4", "short.mp4", "truncated.mp4"):
        assert sum(name in line for line in lines[:-1]) == 1
    assert "0.62 s at 8 fps, the shortest clip needs 1.00 s" in next(line for line in lines if "short.mp4" in line)


def test_truncated_webm_is_measured_by_the_data_it_holds(tmp_path):
    whole = tmp_path / "whole.webm"
    if not write_with(whole, "VP80", procedural.make_video(0, 80, 32, 8).frames, 8):
        pytest.skip("this OpenCV cannot write webm (VP8)")
    (tmp_path / "cut.webm").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    video = folder(tmp_path).videos[0]
    assert 8 <= video.frames < 70  # the header still claims 80 frames
    clip = read_clip(video, video.frames - 8, 8, 8, 16, 16)  # the very end of what is there decodes
    assert clip.shape == (8, 16, 16, 3)


def test_odd_source_size_is_centre_cropped_to_the_target_aspect_then_resized(tmp_path):
    frame = np.zeros((23, 37, 3), np.uint8)
    frame[:, :, 0] = np.linspace(0, 255, 37).astype(np.uint8)  # red ramp left to right
    frame[:, :7, 1] = frame[:, 31:, 1] = 255  # green bands outside the centre square
    write_video(np.repeat(frame[None], 8, axis=0), tmp_path / "odd.mp4", 8)  # stored padded to 38x24
    clips = folder(tmp_path, size=16).clips(random.Random(0), 1, 8)
    assert clips.pixels.shape == (1, 3, 8, 16, 16) and clips.pixels.dtype == torch.float32
    got = ((clips.pixels[0, :, 0].permute(1, 2, 0) + 1) * 127.5).numpy()
    centre = np.pad(frame, ((0, 1), (0, 1), (0, 0)), mode="edge")[:, 7:31]  # the 24x24 centre of the stored frame
    expected = cv2.resize(centre, (16, 16), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(got - expected).mean() < 8
    assert got[:, 2:14, 1].mean() < 30  # no green: the sides were cropped, not squeezed in


def test_webm_and_mov_are_found_in_subfolders_whatever_the_case(tmp_path):
    frames = procedural.make_video(1, 16, 32, 8).frames
    (tmp_path / "a" / "b").mkdir(parents=True)
    write_video(frames, tmp_path / "top.MP4", 8)
    if not write_with(tmp_path / "a" / "clip.Mov", "mp4v", frames, 8):
        pytest.skip("this OpenCV cannot write mov (mp4v)")
    if not write_with(tmp_path / "a" / "b" / "clip.WEBM", "VP80", frames, 8):
        pytest.skip("this OpenCV cannot write webm (VP8)")
    write_video(frames, tmp_path / "a" / ".hidden.mp4", 8)  # hidden files (temporaries, macOS ._ files) are ignored
    (tmp_path / "notes.txt").write_text("not a video")
    videos = folder(tmp_path)
    assert [videos.relative(v.path) for v in videos.videos] == ["a/b/clip.WEBM", "a/clip.Mov", "top.MP4"]
    assert not videos.skipped
    assert videos.clips(random.Random(0), 3, 8).pixels.shape == (3, 3, 8, 16, 16)


def test_sidecar_captions_are_the_ones_active_at_each_frame(tmp_path):
    dark_then_bright = np.concatenate([np.full((16, 16, 16, 3), 40, np.uint8), np.full((16, 16, 16, 3), 210, np.uint8)])
    write_video(dark_then_bright, tmp_path / "clip.mp4", 8)  # 4 s: dark for 2 s, then bright
    (tmp_path / "clip.txt").write_text("global: film look\n0s: woman stands by shelf\n2s: woman pets cat\n")
    procedural_video(tmp_path / "other.mp4", frames=32)  # no caption file: empty captions
    videos = folder(tmp_path)
    captioned = next(v for v in videos.videos if v.path.name == "clip.mp4")
    assert captioned.captions_of(12, 8) == ["film look, woman stands by shelf"] * 4 + ["film look, woman pets cat"] * 4
    assert videos.captions() == {"film look, woman stands by shelf", "film look, woman pets cat"}
    clips = videos.clips(random.Random(3), 16, 8)
    pairs = [(float(clips.pixels[b, :, k].mean()), caption) for b, row in enumerate(clips.captions)
             for k, caption in enumerate(row)]
    assert {caption for _, caption in pairs} == {"", "film look, woman stands by shelf", "film look, woman pets cat"}
    for brightness, caption in pairs:  # every frame carries the caption of its own time
        if caption.endswith("shelf"):
            assert brightness < -0.4
        elif caption.endswith("cat"):
            assert brightness > 0.4


def test_folder_captions_cover_every_caption_training_can_ask_for(tmp_path):
    procedural_video(tmp_path / "a.mp4", frames=48)
    (tmp_path / "a.txt").write_text("global: film look\n0s: walks in / [2s-3s: sits down] / 4.5s: leaves\n")
    procedural_video(tmp_path / "b.mp4", frames=16)
    (tmp_path / "b.txt").write_text("a plain prompt without times\n")
    asked = folder(tmp_path).captions()
    assert asked == {"film look, walks in", "film look, sits down", "film look", "film look, leaves",
                     "a plain prompt without times"}
    assert set(folder_captions(tmp_path)) == asked


def test_a_bad_caption_file_skips_its_video_with_the_reason(tmp_path, capsys):
    procedural_video(tmp_path / "a.mp4", frames=16)
    (tmp_path / "a.txt").write_text("0s: walks in\n9s: sits down\n")  # 9 s is past the 2 s video
    procedural_video(tmp_path / "b.mp4", frames=16)
    videos = folder(tmp_path)
    assert [p.name for p, _ in videos.skipped] == ["a.mp4"] and videos.skipped[0][1] == "bad caption file"
    assert "a.txt: storyboard line 2" in capsys.readouterr().err


def test_same_seed_and_step_give_the_same_batch_in_a_new_process_state(tmp_path):
    for i in range(3):
        procedural_video(tmp_path / f"v{i}.mp4", frames=24 + 8 * i, seed=i)
    first = folder(tmp_path).clips(random.Random(7), 4, 8)
    again = folder(tmp_path).clips(random.Random(7), 4, 8)  # a fresh scan, as after a restart
    other = folder(tmp_path).clips(random.Random(8), 4, 8)
    assert torch.equal(first.pixels, again.pixels) and first.captions == again.captions
    assert not torch.equal(first.pixels, other.pixels)


def test_a_file_damaged_after_the_scan_is_reported_once_and_replaced_by_other_draws(tmp_path, capsys):
    procedural_video(tmp_path / "a.mp4", seed=1)
    procedural_video(tmp_path / "b.mp4", seed=2)
    videos = folder(tmp_path)
    (tmp_path / "a.mp4").write_bytes(b"gone")
    capsys.readouterr()
    for step in range(3):
        assert videos.clips(random.Random(step), 4, 8).pixels.shape == (4, 3, 8, 16, 16)
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "a.mp4" in warnings[0] and "drawing clips from other videos" in warnings[0]


@pytest.mark.parametrize("make,message", [
    (lambda root: None, "--data: no mp4/webm/mov files in"),
    (lambda root: (root / "x.mp4").write_bytes(b"\0" * 100), "--data: no usable video in"),
    (lambda root: procedural_video(root / "x.mp4", frames=4), "--data: no usable video in"),
])
def test_a_folder_without_usable_video_is_a_one_line_cli_error(tmp_path, capsys, make, message):
    data = tmp_path / "data"
    data.mkdir()
    make(data)
    code = main(["pretrain", "--data", str(data), "--out", str(tmp_path / "out"), "--steps", "1",
                 "--history-frames", "8", "--quiet"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: " + message)
    assert not (tmp_path / "out").exists()


def test_history_longer_than_every_video_is_an_error_naming_the_flag(tmp_path, capsys):
    procedural_video(tmp_path / "data" / "a.mp4", frames=16)
    code = main(["pretrain", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--steps", "1",
                 "--history-frames", "8", "32", "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("error: --data: a clip of 32 frames needs 4.00 s")
    assert "--history-frames" in error


def test_resuming_a_run_on_a_video_folder_continues_the_same_loss_curve(tmp_path, capsys):
    for i in range(2):
        procedural_video(tmp_path / "data" / f"v{i}.mp4", frames=24, seed=i)
    (tmp_path / "data" / "v0.txt").write_text("0s: a walk\n")

    def run(out, steps):
        return train(TrainSettings(stage="pretrain", out=tmp_path / out, steps=steps, batch=1, history_frames=(8,),
                                   targets=2, checkpoint_every=2, data=tmp_path / "data"), progress=False)

    straight = run("a", 3)
    resumed = run("b", 2) + run("b", 3)
    assert resumed == pytest.approx(straight, abs=1e-5)
    assert "caption files but no --text-embeddings" in capsys.readouterr().err


def test_a_fifo_or_oversized_caption_file_is_skipped_with_a_warning_not_waited_for(tmp_path, capsys):
    procedural_video(tmp_path / "piped.mp4", frames=32)
    os.mkfifo(tmp_path / "piped.txt")
    procedural_video(tmp_path / "huge.mp4", frames=32)
    with open(tmp_path / "huge.txt", "wb") as file:
        file.truncate(2**30)  # sparse
    procedural_video(tmp_path / "plain.mp4", frames=32)
    videos = folder(tmp_path)
    assert [v.path.name for v in videos.videos] == ["plain.mp4"]
    err = capsys.readouterr().err
    assert "piped.txt" in err and "not a regular file" in err and "huge.txt" in err and "more than the limit" in err


def test_quiet_training_shows_no_scan_videos_bar(tmp_path):
    procedural_video(tmp_path / "data" / "clip.mp4", frames=40)
    done = subprocess.run([sys.executable, "-m", "pfp_core", "pretrain", "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "run"), "--steps", "1", "--batch", "1", "--history-frames", "8", "--quiet"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "scan videos" not in done.stderr and "--data: 1 videos usable" in done.stderr, done.stderr


def test_frames_over_the_size_cap_are_refused_from_the_header_before_decoding(tmp_path, monkeypatch, capsys):
    """A real 64x48 video under a lowered cap of 32 pixels per side: pretrain stops with one line naming --data and
    the file, before --out exists; the same folder under a cap of 64 trains."""
    procedural_video(tmp_path / "data" / "small.mp4", frames=16)
    big = tmp_path / "data" / "wide.mp4"
    write_video(np.zeros((16, 48, 64, 3), np.uint8), big, 8)
    monkeypatch.setattr(limits, "MAX_SIDE", 32)
    argv = ["pretrain", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--steps", "1",
            "--history-frames", "8", "--quiet"]
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (f"error: --data: '{big}' has frames of 64x48 pixels, more than the limit of 32 per side; scale "
                        "it down (e.g. ffmpeg -vf scale=1280:-2) or move it out of the folder")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(limits, "MAX_SIDE", 64)
    assert len(folder(tmp_path / "data").videos) == 2
