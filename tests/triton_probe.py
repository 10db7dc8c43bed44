"""Run by the serving environment's Python (tests/test_triton_server.py): raw tensors from a served repository.

    python tests/triton_probe.py HTTP_URL GRPC_URL MODEL MODEL_VERSION_DIR OUT.npz IMAGE...

Saves: the pixels of each image as the served model computes them — its vendored preprocessing
(MODEL_VERSION_DIR/trt_res2net_vendored, the copy the server runs) in this, the server's, environment; the
model's outputs for all images in ONE request, over HTTP and over gRPC; and Triton's classification extension
(class_count 5) on the model's PROBABILITIES over HTTP.
"""

import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

OUTPUTS = ("PROBABILITIES", "TOPK_IDS", "TOPK_SCORES", "TOPK_LABELS")


def images_input(module, images, **kw):
    data = np.array([[b] for b in images], dtype=object)
    inp = module.InferInput("IMAGE", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data, **kw)
    return inp


def main(http_url, grpc_url, model, version_dir, out, *paths):
    images = [Path(p).read_bytes() for p in paths]
    sys.path.insert(0, version_dir)
    from trt_res2net_vendored.data.preprocess import preprocess

    result = {"pixels": np.stack([preprocess(data) for data in images])}
    http = httpclient.InferenceServerClient(http_url, network_timeout=120)
    r = http.infer(model, [images_input(httpclient, images, binary_data=True)],
                   outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS])
    for o in OUTPUTS:
        result[f"http_{o}"] = r.as_numpy(o)
    r = http.infer(model, [images_input(httpclient, images, binary_data=True)],
                   outputs=[httpclient.InferRequestedOutput("PROBABILITIES", binary_data=False, class_count=5)])
    result["classification"] = r.as_numpy("PROBABILITIES")
    grpc = grpcclient.InferenceServerClient(grpc_url)
    r = grpc.infer(model, [images_input(grpcclient, images)],
                   outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS], client_timeout=120)
    for o in OUTPUTS:
        result[f"grpc_{o}"] = r.as_numpy(o)
    for k, v in list(result.items()):
        if v.dtype == object:
            result[k] = np.array([[x.decode() if isinstance(x, bytes) else str(x) for x in row] for row in v])
    np.savez(out, **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
