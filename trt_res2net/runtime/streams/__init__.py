"""The stream runner's parts, one job each (the public API is ``trt_res2net.runtime.stream``): ``control`` (what the
threads share), ``capture`` (one thread per source: reading, pacing, reconnects), ``batching`` (batches across
sources, CPU preprocessing), ``inference`` (the model, smoothing, the threshold) and ``results`` (what a run
reports)."""
