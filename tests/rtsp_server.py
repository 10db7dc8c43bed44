"""A GStreamer RTSP server on loopback for the stream tests, run by the SYSTEM python3 (Debian's python3-gi and
gir1.2-gst-rtsp-server-1.0; the project's venv has no GStreamer bindings).

    /usr/bin/python3 tests/rtsp_server.py PORT [FPS]

Serves rtsp://127.0.0.1:PORT/test: a moving test pattern, 320×240 at FPS (30), H.264 (x264, a key frame every
15 frames), one pipeline shared by every client. Prints "ready" once listening; stops on SIGTERM or SIGINT.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port = sys.argv[1]
fps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate={fps}/1 ! "
    "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/test", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
loop = GLib.MainLoop()
for sig in (signal.SIGTERM, signal.SIGINT):
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
loop.run()
