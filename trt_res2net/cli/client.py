"""``python -m trt_res2net.cli.client IMAGE_OR_DIR... --model NAME``: classify images with a model served by Triton
(serve.py), printing what infer.py prints. The requests are ``trt_res2net.serving.client.TritonClassifier``'s.

Exit status: 0 all classified, 1 some failed (or no server answers, or it does not serve the model), 2 usage error,
3 tritonclient missing.
"""

from __future__ import annotations

import argparse
import sys

from ..core.errors import EXIT_OK, EXIT_SOME_FAILED, UserError
from ..serving.client import TritonClassifier
from .common import FieldFlags, positive_int, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trt_res2net.cli.client",
                                description="Classify images with a model served by Triton (serve.py).")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    p.add_argument("--model", required=True, help="the served image model, e.g. res2net50_vd_26w_4s_python")
    p.add_argument("--url", help="host:port (default 127.0.0.1:8000 for http, :8001 for grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--concurrency", type=positive_int, default=1, metavar="N", help="requests in flight (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (infer.py's form)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-image tables")
    return p


# The one table from the library's option fields to this command's flags: the library's refusals, which name the
# fields, are shown with the flags.
FLAGS = FieldFlags({
    "TritonClassifier.model": "--model",
    "TritonClassifier.url": "--url",
    "TritonClassifier.protocol": "--protocol",
})


def main(argv=None) -> int:
    def body() -> int:
        from ..data.images import find_images
        from ..data.postprocess import format_topk

        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        paths = find_images(args.inputs)
        if not paths:
            raise UserError(f"no images found in {', '.join(args.inputs)}")
        with TritonClassifier(args.model, args.url, args.protocol) as client:
            client.check_ready()  # one line when no server answers or it does not serve --model
            results = client.classify(paths, args.concurrency)
        failed = 0
        for r in results:
            if "error" in r:
                failed += 1
                print(f"failed {r['image']}: {r['error']}", file=sys.stderr)
            elif not args.quiet:
                print(format_topk(r["topk"], r["image"]))
        if args.json:
            from ..core.files import write_json

            write_json(args.json, results)
        print(f"{len(results) - failed} of {len(results)} images classified by {args.model}", file=sys.stderr)
        return EXIT_SOME_FAILED if failed else EXIT_OK

    return run_main(body, FLAGS)


if __name__ == "__main__":
    raise SystemExit(main())
