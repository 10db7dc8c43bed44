"""Sources by URI (trt_res2net/data/sources.py): parsing, the stream/image decision, the Jetson GStreamer pipelines
(strings only: they cannot run without a Jetson) and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import stream_tools as st

from trt_res2net.core.errors import UserError
from trt_res2net.data import sources as S


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    import cv2

    d = tmp_path_factory.mktemp("media")
    images = st.frames(3)
    folder = d / "frames"
    folder.mkdir()
    for i, im in reversed(list(enumerate(images))):  # written out of order: the source sorts them
        cv2.imwrite(str(folder / f"f{i:02d}.png"), im)
    (folder / "notes.txt").write_text("not an image")
    st.write_video(d / "clip.mkv", images, "FFV1")
    return d


def test_files_folders_and_globs(media):
    video = S.parse_source(media / "clip.mkv")
    assert (video.kind, video.backend, video.live, video.reconnect) == ("video", "ffmpeg", False, False)
    assert video.target == str(media / "clip.mkv") and video.name == "clip"
    assert S.parse_source(f"file://{media / 'clip.mkv'}").target == str(media / "clip.mkv")
    folder = S.parse_source(media / "frames")
    assert folder.kind == "images" and [p.name for p in folder.paths] == ["f00.png", "f01.png", "f02.png"]
    glob = S.parse_source(str(media / "frames" / "f0[12].png"))
    assert glob.kind == "images" and [p.name for p in glob.paths] == ["f01.png", "f02.png"]
    one = S.parse_source(media / "frames" / "f01.png")
    assert one.kind == "images" and len(one.paths) == 1


def test_cameras():
    for uri, index in [("/dev/video0", 0), ("v4l2:///dev/video2", 2), ("v4l2://1", 1), ("3", 3)]:
        s = S.parse_source(uri)
        assert (s.kind, s.backend, s.target, s.live, s.reconnect) == ("camera", "v4l2", index, True, True), uri


def test_network_streams():
    rtsp = S.parse_source("rtsp://user:pw@10.0.0.5:554/stream1?channel=2")
    assert (rtsp.kind, rtsp.backend, rtsp.live, rtsp.reconnect) == ("network", "ffmpeg", True, True)
    assert rtsp.target == "rtsp://user:pw@10.0.0.5:554/stream1?channel=2"
    assert S.parse_source("rtp://@:1234").target == "rtp://0.0.0.0:1234"  # jetson-inference's listen syntax
    assert S.parse_source("udp://127.0.0.1:5000").live
    assert not S.parse_source("http://example.org/clips/a.mp4").live  # a file over HTTP loses no frame
    assert S.parse_source("https://example.org/live").live
    assert S.parse_source("http://127.0.0.1:8080/live.ts").live  # MPEG-TS over HTTP: a live stream


def test_gstreamer_pipelines_as_given():
    live = S.parse_source("videotestsrc ! video/x-raw,width=320,height=240 ! videoconvert")
    assert (live.backend, live.live) == ("gstreamer", True)
    assert live.target.endswith("! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")
    given = "filesrc location=a.mp4 ! decodebin ! videoconvert ! appsink"
    f = S.parse_source(given)
    assert f.target == given and not f.live  # a file pipeline: no frame dropped; its own appsink kept


def test_csi_pipeline_from_nvidia_docs():
    s = S.parse_source("csi://1?width=1280&height=720&framerate=60&flip=2")
    assert (s.kind, s.backend, s.live, s.name) == ("csi", "gstreamer", True, "csi1")
    assert s.target == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=60/1,format=NV12 ! "
        "nvvidconv flip-method=2 ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1 sync=false")
    assert "width=1920,height=1080,framerate=30/1" in S.parse_source("csi://0").target


def test_hardware_decoding_pipelines():
    rtsp = S.parse_source("rtsp://cam/live", decoder="nvv4l2", codec="h265")
    assert rtsp.backend == "gstreamer" and rtsp.live
    assert rtsp.target == (
        "rtspsrc location=rtsp://cam/live latency=200 ! rtph265depay ! h265parse ! nvv4l2decoder ! nvvidconv ! "
        "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")
    assert S.file_nvdec_pipeline("/v/a.mkv") == (
        "filesrc location=/v/a.mkv ! matroskademux ! h264parse ! nvv4l2decoder ! nvvidconv ! "
        "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink sync=false")
    assert "qtdemux ! h264parse" in S.file_nvdec_pipeline("b.mp4")
    assert S.usb_mjpeg_nvdec_pipeline("/dev/video1", 640, 480, 30).startswith(
        "v4l2src device=/dev/video1 io-mode=2 ! image/jpeg,width=640,height=480,framerate=30/1 ! "
        "nvv4l2decoder mjpeg=1 ! nvvidconv")
    # UDP and other network streams keep FFmpeg: nvv4l2 is for RTSP and files.
    assert S.parse_source("udp://127.0.0.1:5000", decoder="nvv4l2").backend == "ffmpeg"


def test_hardware_decoding_of_a_file(media):
    s = S.parse_source(media / "clip.mkv", decoder="nvv4l2")
    assert s.backend == "gstreamer" and not s.live and "matroskademux ! h264parse ! nvv4l2decoder" in s.target
    with pytest.raises(UserError, match="no hardware-decoding pipeline for .y4m"):
        S.file_nvdec_pipeline("a.y4m")


@pytest.mark.parametrize("text, stream", [
    ("photo.jpg", False), ("photos", False), ("clip.mp4", True), ("clip.MKV", True), ("rtsp://h/x", True),
    ("csi://0", True), ("/dev/video0", True), ("0", True), ("frames/*.png", True),
    ("videotestsrc ! appsink", True), ("missing.jpg", False),
])
def test_stream_or_images(tmp_path, monkeypatch, text, stream):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    assert S.is_stream_uri(text) is stream


@pytest.mark.parametrize("uri, message", [
    ("ftp://host/a.mp4", "unknown source scheme ftp://"),
    ("csi://front", "csi://N"),
    ("csi://0?width=wide", "width must be an integer"),
    ("v4l2://cam", "/dev/videoN"),
    ("{tmp}/missing.mp4", "no such file or directory"),
    ("{tmp}/empty", "no images found"),
    ("{tmp}/*.png", "no images match"),
    ("", "an empty source"),
])
def test_bad_sources_are_one_line(tmp_path, uri, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=message) as e:
        S.parse_source(uri.format(tmp=tmp_path))
    assert "\n" not in str(e.value)


def test_bad_decoder_and_codec():
    with pytest.raises(UserError, match="decoder must be"):
        S.parse_source("rtsp://h/x", decoder="vaapi")
    with pytest.raises(UserError, match="codec must be"):
        S.parse_source("rtsp://h/x", decoder="nvv4l2", codec="vp9")


def test_gstreamer_missing_is_one_line_naming_what_to_install():
    if S.opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    for uri in ("csi://0", "videotestsrc ! appsink"):
        with pytest.raises(UserError) as e:
            S.open_capture(S.parse_source(uri))
        text = str(e.value)
        assert text.startswith(f"{uri}: needs OpenCV built with GStreamer") and "nvidia-opencv" in text
        assert "\n" not in text


def test_gstreamer_detection_reads_the_build_information():
    import cv2

    line = next(ln for ln in cv2.getBuildInformation().splitlines() if ln.strip().startswith("GStreamer:"))
    assert S.opencv_has_gstreamer() is ("YES" in line)


def test_unopenable_sources_name_the_backend(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 1000)
    with pytest.raises(UserError, match=r"bad.mp4: cannot open with OpenCV's FFmpeg backend \(not a video"):
        S.open_capture(S.parse_source(bad))
    port = st.free_port()  # nothing listens there: refused at once
    with pytest.raises(UserError, match="cannot open with OpenCV's FFmpeg backend"):
        S.open_capture(S.parse_source(f"rtsp://127.0.0.1:{port}/x"), open_timeout=2)


def test_image_sequence_decodes_like_infer_and_reports_bad_frames(media, tmp_path):
    import cv2

    from trt_res2net.data.preprocess import decode_image

    folder = S.parse_source(media / "frames")
    cap = S.open_capture(folder)
    got = [cap.read() for _ in range(3)]
    assert cap.read() is None and cap.frame_count == 3
    for frame, path in zip(got, folder.paths, strict=True):
        assert np.array_equal(frame, decode_image(path)) and np.array_equal(frame, cv2.imread(str(path)))
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cap = S.open_capture(S.parse_source(tmp_path / "a.png"))
    with pytest.raises(S.FrameError, match="truncated PNG"):
        cap.read()


def test_lossless_video_frames_are_the_written_frames(media):
    cap = S.open_capture(S.parse_source(media / "clip.mkv"))
    frames = []
    while (f := cap.read()) is not None:
        frames.append(f)
    cap.release()
    assert len(frames) == 3 and all(np.array_equal(a, b) for a, b in zip(frames, st.frames(3), strict=True))
    assert frames[0].dtype == np.uint8 and frames[0].shape == (240, 320, 3)


def test_unique_names(media):
    a = S.parse_source(media / "clip.mkv")
    assert S.unique_names([a, a, S.parse_source("csi://0")]) == ["clip", "clip_2", "csi0"]


def test_the_plan_resolves_every_source_before_any_capture(tmp_path):
    from trt_res2net.runtime.stream import StreamOptions, plan_streams

    parsed = S.parse_source("rtsp://cam/live")
    plan = plan_streams(["rtsp://h/x", "bogus://x", parsed], StreamOptions(batch=2))
    assert [p.uri for p in plan.sources] == ["rtsp://h/x", "bogus://x", "rtsp://cam/live"]
    assert plan.sources[0].source.kind == "network" and plan.sources[2].source is parsed
    refused = plan.sources[1]
    assert refused.source is None and "unknown source scheme bogus://" in str(refused.refusal)
    assert plan.options.batch == 2
    with pytest.raises(UserError, match="^no sources given$"):
        plan_streams([])
    with pytest.raises(UserError, match=r"^StreamOptions\.decoder must be one of cpu, nvv4l2, not 'gpu'$"):
        plan_streams(["a.mp4"], StreamOptions(decoder="gpu"))


def test_stream_options_refusals_name_the_field():
    from trt_res2net.runtime.stream import StreamOptions

    with pytest.raises(UserError, match=r"^StreamOptions\.reconnect_timeout must be positive, not 0$"):
        StreamOptions(reconnect_timeout=0)
    with pytest.raises(UserError, match=r"^StreamOptions\.threshold is a probability in \[0, 1\], not 1\.5$"):
        StreamOptions(threshold=1.5)
