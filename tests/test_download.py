"""Weight download against a local HTTP server on 127.0.0.1 serving generated weights."""

import http.server
import socket
import threading

import numpy as np
import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.model import weights as W


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    cut_short: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 3] if self.path in self.cut_short else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tiny_spec, tiny_weights, tmp_path):
    import pickle

    _Handler.files = {"/dygraph/tiny.pdparams": pickle.dumps(tiny_weights, protocol=4)}
    _Handler.cut_short = {"/dygraph/short.pdparams"}
    _Handler.files["/dygraph/short.pdparams"] = _Handler.files["/dygraph/tiny.pdparams"]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_completes_and_loads(server, tmp_path, tiny_spec, tiny_weights):
    dest = W.download(f"{server}/dygraph/tiny.pdparams", tmp_path / "cache" / "tiny.pdparams", progress=False)
    assert dest.exists() and not list(tmp_path.glob("cache/*.part"))
    loaded = W.load_weights(dest, tiny_spec)
    np.testing.assert_array_equal(loaded["out.weight"], tiny_weights["out.weight"])


def test_interrupted_download_leaves_nothing_that_looks_complete(server, tmp_path):
    dest = tmp_path / "short.pdparams"
    with pytest.raises(UserError, match="could not download|stopped early"):
        W.download(f"{server}/dygraph/short.pdparams", dest, progress=False, timeout=5)
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_offline_error_says_what_to_pass(tmp_path):
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as e:
        W.download(f"http://127.0.0.1:{port}/x.pdparams", tmp_path / "x.pdparams", progress=False, timeout=5)
    assert "ExportOptions.weights=PATH" in str(e.value) and "ExportOptions.random_weights=True" in str(e.value)
    from trt_res2net.cli.build import FLAGS  # build.py shows the fields as its flags

    shown = FLAGS.message(str(e.value))
    assert "Pass --weights PATH to a .pdparams file, or --random-weights for a smoke test" in shown
    assert not list(tmp_path.iterdir())


def test_fetch_pretrained_uses_the_cache_dir_and_downloads_once(server, tmp_path, monkeypatch):
    from trt_res2net.model import zoo

    monkeypatch.setenv("TRT_RES2NET_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("TRT_RES2NET_WEIGHTS_BASE_URL", f"{server}/dygraph/")
    spec = zoo.get_model("res2net50_vd_26w_4s")
    body = _Handler.files["/dygraph/tiny.pdparams"]
    _Handler.files["/dygraph/Res2Net50_vd_26w_4s_pretrained.pdparams"] = body
    path = W.fetch_pretrained(spec, progress=False)
    assert path == tmp_path / "c" / "Res2Net50_vd_26w_4s_pretrained.pdparams" and path.read_bytes() == body
    del _Handler.files["/dygraph/Res2Net50_vd_26w_4s_pretrained.pdparams"]
    assert W.fetch_pretrained(spec, progress=False) == path  # cached: no second request needed


def test_run_export_downloads_the_planned_weights_once(server, tmp_path, tiny_spec):
    from trt_res2net.model.export import ExportPlan, WeightsSource, run_export

    cached = tmp_path / "c" / "tiny.pdparams"
    plan = ExportPlan(tiny_spec, WeightsSource(cached, f"{server}/dygraph/tiny.pdparams"), tmp_path / "t.onnx", 17,
                      progress=False)
    assert plan.weights.kind == "published"
    first = run_export(plan)
    assert first.weights == "tiny.pdparams" and cached.is_file() and first.path.is_file()
    del _Handler.files["/dygraph/tiny.pdparams"]
    assert run_export(plan) == first  # from the cache: no second request
