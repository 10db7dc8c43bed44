"""serve.py: start Triton Inference Server on a model repository, print where it listens, stop it cleanly.

    python serve.py REPO_DIR [--http-port 8000] [--grpc-port 8001] [--metrics-port 8002] [--host 127.0.0.1]

The work is ``trt_res2net.serving.server`` (which tritonserver, its set-up, start, readiness, stop).

Exit status: 0 stopped on request; 1 the server failed or stopped by itself; 2 usage error (missing repository,
port in use, ...); 3 no tritonserver here (says what to install).
"""

from __future__ import annotations

import argparse
import sys

from ..serving.server import DEFAULT_HOST, DEFAULT_READY_TIMEOUT, DEFAULT_STOP_TIMEOUT, ServerOptions, serve
from .common import FieldFlags, bounded_int, run_main

port_number = bounded_int(1, 65535, "a port number 1..65535")


def build_parser() -> argparse.ArgumentParser:
    defaults = ServerOptions()
    p = argparse.ArgumentParser(
        prog="serve.py",
        description="Serve a model repository (build.py --triton-repo) with Triton Inference Server on loopback "
                    "(KServe v2 HTTP and gRPC), until SIGTERM or Ctrl-C.",
        epilog="Exit status: 0 stopped on request, 1 the server failed, 2 usage error, 3 no tritonserver here.",
    )
    p.add_argument("repo", metavar="REPO_DIR", help="a Triton model repository (build.py ... --triton-repo DIR)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}, loopback only; 0.0.0.0 for every interface)")
    p.add_argument("--http-port", type=port_number, default=defaults.http_port, metavar="N",
                   help=f"HTTP port (default {defaults.http_port})")
    p.add_argument("--grpc-port", type=port_number, default=defaults.grpc_port, metavar="N",
                   help=f"gRPC port (default {defaults.grpc_port})")
    p.add_argument("--metrics-port", type=port_number, default=defaults.metrics_port, metavar="N",
                   help=f"Prometheus metrics port (default {defaults.metrics_port})")
    p.add_argument("--no-metrics", action="store_true", help="no metrics endpoint")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="load only this model (and what an ensemble needs); repeatable (default: every model whose "
                        "backend this server has)")
    p.add_argument("--tritonserver", metavar="PATH",
                   help="the tritonserver binary (default: the one on PATH, else nvidia-pytriton's)")
    p.add_argument("--backend-directory", metavar="DIR",
                   help="Triton's backend folder (default: the server's own; /opt/tritonserver/backends in NVIDIA's "
                        "containers)")
    p.add_argument("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the models to load (default {DEFAULT_READY_TIMEOUT:g})")
    p.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT, metavar="S",
                   help=f"seconds a stopping server gets before SIGKILL (default {DEFAULT_STOP_TIMEOUT:g})")
    p.add_argument("-v", "--verbose", action="store_true", help="show the server's own log")
    p.add_argument("--extra", action="append", default=[], metavar="ARG",
                   help="one more tritonserver argument, e.g. --extra=--log-verbose=1 (repeatable)")
    return p


# The one table from the library's option fields to this command's flags: the options are built from it, and
# the library's refusals, which name the fields, are shown with the flags.
FLAGS = FieldFlags({
    "ServerOptions.host": "--host",
    "ServerOptions.http_port": "--http-port",
    "ServerOptions.grpc_port": "--grpc-port",
    "ServerOptions.metrics_port": "--metrics-port",
    "ServerOptions.models": "--model",
    "ServerOptions.tritonserver": "--tritonserver",
    "ServerOptions.backend_directory": "--backend-directory",
    "ServerOptions.ready_timeout": "--ready-timeout",
    "ServerOptions.stop_timeout": "--stop-timeout",
    "ServerOptions.verbose": "--verbose",
    "ServerOptions.extra_args": "--extra",
})


def server_options(args: argparse.Namespace) -> ServerOptions:
    return FLAGS.options(ServerOptions, args, metrics=not args.no_metrics,
                         models=tuple(args.model) if args.model else None, extra_args=tuple(args.extra))


def main(argv=None) -> int:
    def body() -> int:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        return serve(args.repo, server_options(args))

    return run_main(body, FLAGS)
