"""Run by the serving environment's Python (tests/test_triton_server.py): raw tensors from a served repository.

    python tests/triton_probe.py HTTP_URL GRPC_URL MODEL ENSEMBLE OUT.npz IMAGE...

Saves: MODEL_preprocess's PIXELS for each image (one request each, HTTP); the ensemble's outputs for all
images in ONE request, over HTTP and over gRPC; and Triton's classification extension (class_count 5) on the
ensemble's PROBABILITIES over HTTP.
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


def main(http_url, grpc_url, model, ensemble, out, *paths):
    images = [Path(p).read_bytes() for p in paths]
    result = {}
    http = httpclient.InferenceServerClient(http_url, network_timeout=120)
    pixels = []
    for data in images:
        r = http.infer(f"{model}_preprocess", [images_input(httpclient, [data], binary_data=True)],
                       outputs=[httpclient.InferRequestedOutput("PIXELS", binary_data=True)])
        pixels.append(r.as_numpy("PIXELS")[0])
    result["pixels"] = np.stack(pixels)
    r = http.infer(ensemble, [images_input(httpclient, images, binary_data=True)],
                   outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in OUTPUTS])
    for o in OUTPUTS:
        result[f"http_{o}"] = r.as_numpy(o)
    r = http.infer(ensemble, [images_input(httpclient, images, binary_data=True)],
                   outputs=[httpclient.InferRequestedOutput("PROBABILITIES", binary_data=False, class_count=5)])
    result["classification"] = r.as_numpy("PROBABILITIES")
    grpc = grpcclient.InferenceServerClient(grpc_url)
    r = grpc.infer(ensemble, [images_input(grpcclient, images)],
                   outputs=[grpcclient.InferRequestedOutput(o) for o in OUTPUTS], client_timeout=120)
    for o in OUTPUTS:
        result[f"grpc_{o}"] = r.as_numpy(o)
    for k, v in list(result.items()):
        if v.dtype == object:
            result[k] = np.array([[x.decode() if isinstance(x, bytes) else str(x) for x in row] for row in v])
    np.savez(out, **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
