"""`dgate`: one command for building, exporting, serving and benchmarking."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch comes with it: imported when a command runs
    from dgate.export.triton_config import ServingOptions


def _add_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)


def cmd_tiny(args: argparse.Namespace) -> int:
    if args.full_size:
        from dgate.full_size import DEFAULT_FULL_SIZE_PIPELINES, FULL_SIZE_PIPELINES, build_full_size_pipeline

        known, defaults, build = FULL_SIZE_PIPELINES, DEFAULT_FULL_SIZE_PIPELINES, build_full_size_pipeline
    else:
        from dgate.tiny import ALL_TINY_PIPELINES, TINY_PIPELINES, build_tiny_pipeline

        known, defaults, build = ALL_TINY_PIPELINES, TINY_PIPELINES, build_tiny_pipeline
    names = args.name or defaults
    unknown = [name for name in names if name not in known]
    if unknown:
        kind = "full-size" if args.full_size else "tiny"
        raise SystemExit(f"unknown {kind} pipeline(s) {', '.join(unknown)}; expected one of {', '.join(known)}")
    for name in names:
        print(build(name, args.out))
    return 0


def export_refusal(args: argparse.Namespace) -> str | None:
    """Why `dgate export` cannot do what `args` ask, or None; checked before any model is read."""
    from dgate.export.triton_config import TORCH_QUANTIZED, unservable

    if args.name and len(args.name) != len(args.model):
        return "--name must be given once per --model"
    if args.quantized and len(args.quantized) != len(args.model):
        return "--quantized must be given once per --model ('-' for a model served unquantized)"
    if args.engine == "torch" and any(str(q) != "-" for q in args.quantized or ()):
        return TORCH_QUANTIZED
    return unservable(serving_options(args))


def serving_options(args: argparse.Namespace) -> ServingOptions:
    from dgate.export.triton_config import ServingOptions

    return ServingOptions(
        triton_backend=args.triton_backend, engine=args.engine, device=args.device, denoiser=args.denoiser,
        denoiser_instances=args.denoiser_instances, component_instances=args.component_instances,
        video_denoiser_instances=args.video_denoiser_instances,
        max_queue_delay_us=args.max_queue_delay_us, onnx_threads=args.onnx_threads, lora=args.lora,
    )


def cmd_export(args: argparse.Namespace) -> int:
    refusal = export_refusal(args)
    if refusal is not None:  # argparse's one-line error, without the long usage
        args.export_parser.exit(2, f"{args.export_parser.prog}: error: {refusal}\n")
    from dgate.core.errors import ExportError
    from dgate.export.pipeline_export import export_pipeline

    options = serving_options(args)
    quantized = [None if q is None or str(q) == "-" else q for q in (args.quantized or [None] * len(args.model))]
    for index, model in enumerate(args.model):
        try:
            report = export_pipeline(
                model, args.out, name=args.name[index] if args.name else None, precision=args.precision,
                options=options, max_size=args.max_size, default_steps=args.default_steps,
                default_scheduler=args.default_scheduler, quantized=quantized[index],
            )
        except ExportError as error:
            print(f"dgate export: {model}: {error}", file=sys.stderr)
            return 2
        for check in report.checks:
            print(f"{report.spec.name:>16} {check.component:<14} {check.precision}: max abs error "
                  f"{check.max_abs_error:.2e} (output scale {check.reference_scale:.2f}, "
                  f"allowed {check.tolerance:g} x max(1, scale))")
    print(f"model repository: {args.out}")
    return 0


def _ports(args: argparse.Namespace):
    from dgate.triton_server import TritonPorts

    return TritonPorts(http=args.http_port, grpc=args.grpc_port, metrics=args.metrics_port)


def cmd_triton(args: argparse.Namespace) -> int:
    from dgate.triton_server import run_foreground

    return run_foreground(args.model_repository, _ports(args), extra_args=args.triton_arg or ())


def frontend_overrides(args: argparse.Namespace, triton_url: str | None = None) -> dict[str, Any]:
    """The settings the command line gives (`--host`, `--port`, the Triton address); the rest, and
    these when not given, come from FrontendSettings' DGATE_* environment (DGATE_HOST, DGATE_PORT...)."""
    values = (("triton_url", triton_url or getattr(args, "triton_url", None)), ("host", args.host), ("port", args.port))
    return {key: value for key, value in values if value is not None}


def cmd_frontend(args: argparse.Namespace) -> int:
    from dgate.frontend.app import run
    from dgate.frontend.settings import FrontendSettings

    run(FrontendSettings(**frontend_overrides(args)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """tritonserver and the frontend as one unit: Triton is restarted when it dies (dgate/triton_supervisor.py);
    SIGTERM drains the frontend, then stops Triton. Exit code 1 when Triton could not be started again."""
    from dgate.frontend.app import run
    from dgate.frontend.settings import FrontendSettings
    from dgate.triton_server import TritonServer
    from dgate.triton_supervisor import TritonSupervisor

    ports = _ports(args)

    def stop_on_sigterm(_signum: int, _frame: object) -> None:
        # While Triton starts (and after the frontend returned): leave through the `finally` below, which
        # stops tritonserver; it runs in its own session, so the default handler would leave it and its
        # stubs running, holding the ports. While the frontend serves, uvicorn's handler drains instead.
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    server = TritonServer(args.model_repository, ports, extra_args=args.triton_arg or ())
    supervisor = TritonSupervisor(server)
    try:
        server.start()
        supervisor.start()
        try:
            run(FrontendSettings(**frontend_overrides(args, ports.grpc_url)), collectors=[supervisor])
        finally:
            supervisor.stop()
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    return 1 if supervisor.gave_up else 0


def cmd_keys_hash(args: argparse.Namespace) -> int:
    """The keys file's line for a key read from stdin (typed hidden on a terminal) or, with --new, a new one."""
    from getpass import getpass

    from dgate.frontend.auth import key_line, new_key, scrypt_hash, sha256_hash

    if args.new:
        key = new_key()
        print(f"new API key (shown once; give it to its user): {key}", file=sys.stderr)
    else:
        key = getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
    if not key:
        print("dgate keys hash: no key (type it, pipe it in, or pass --new)", file=sys.stderr)
        return 2
    print(key_line(scrypt_hash(key) if args.scrypt else sha256_hash(key), name=args.name, role=args.role))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from dgate.bench.run import run_bench

    return run_bench(args)


def cmd_bench_lora(args: argparse.Namespace) -> int:
    from dgate.bench.lora_bench import run_lora_bench

    return run_lora_bench(args)


def cmd_bench_designs(args: argparse.Namespace) -> int:
    from dgate.bench.design_bench import run_design_bench

    return run_design_bench(args)


def cmd_bench_video(args: argparse.Namespace) -> int:
    from dgate.bench.video_bench import run_video_bench

    return run_video_bench(args)


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from dgate.gpu_check.runner import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgate", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny", help="build the embedded tiny (or full-size) random-weight pipelines (offline)")
    tiny.add_argument("--out", type=Path, default=Path("models"))
    tiny.add_argument("--name", action="append",
                      help="pipeline to build (repeatable). Tiny: tiny-sd, tiny-pixart, tiny-sdxl, tiny-sd3, "
                           "tiny-flux (the default: all of these) or tiny-flux-schnell; with --full-size: "
                           "full-sd15 (the default) or full-sdxl")
    tiny.add_argument("--full-size", action="store_true",
                      help="real architectures with random weights (full-sd15: ~4.3 GB, full-sdxl: ~13.9 GB)")
    tiny.set_defaults(func=cmd_tiny)

    export = sub.add_parser("export", help="export diffusers pipelines into a Triton model repository")
    export.add_argument("--model", action="append", required=True,
                        help="a diffusers pipeline directory or hub id (repeat for several pipelines)")
    export.add_argument("--name", action="append", help="served pipeline name (default: the model's folder name)")
    export.add_argument("--out", type=Path, default=Path("build/model_repository"))
    export.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    export.add_argument("--quantized", type=Path, action="append",
                        help="the `dgate calibrate --out` folder of a --model (once per --model, in order; "
                             "'-' for none): its INT8/FP8 denoiser is served")
    export.add_argument("--engine", "--backend", dest="engine", choices=("onnxruntime", "torch", "tensorrt"),
                        default="onnxruntime",
                        help="component engine (--backend: its former name): onnxruntime (ONNX export, checked "
                             "against PyTorch); torch (the pipeline's own modules, no export; LoRA on CPU and GPU); "
                             "tensorrt (strongly typed plans in the pipeline's precision, --device gpu; LoRA by refit "
                             "in the Python backend, none with --triton-backend native)")
    export.add_argument("--triton-backend", choices=("python", "native"), default="python",
                        help="python: components run their --engine in Python-backend models (CPU build "
                             "of Triton); native: onnxruntime/tensorrt backend configs for the NGC image")
    export.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="instance kind of the component models: gpu puts each on the GPU (KIND_GPU)")
    export.add_argument("--denoiser", choices=("async", "blocking"), default="async",
                        help="async: one decoupled image denoiser interleaves every request and streams progress "
                             "and partial images (the ensemble answers gRPC streams only); blocking: one request "
                             "per instance, plain HTTP/gRPC infer, no streaming")
    export.add_argument("--denoiser-instances", type=int, default=1,
                        help="image denoiser processes per pipeline (~250 MB each); blocking: = requests in flight")
    export.add_argument("--video-denoiser-instances", type=int, default=1,
                        help="video loops in flight per video pipeline (each runs one request's steps)")
    export.add_argument("--component-instances", type=int, default=1)
    export.add_argument("--max-queue-delay-us", type=int, default=100)
    export.add_argument("--onnx-threads", type=int, default=0,
                        help="ONNX Runtime threads per Python-backend component (0: all cores)")
    export.add_argument("--no-lora", dest="lora", action="store_false",
                        help="no LoRA inputs, weight maps or dgate_lora model (LoRA needs the python backend)")
    export.add_argument("--max-size", type=int, help="largest width/height served (default: 2x the native size)")
    export.add_argument("--default-steps", type=int, help="default steps (default: the pipeline's own)")
    export.add_argument("--default-scheduler",
                        help="scheduler used when a request names none (default: the pipeline's own)")
    export.set_defaults(func=cmd_export, export_parser=export)

    for name, func, text in (("triton", cmd_triton, "start tritonserver on a model repository"),
                             ("serve", cmd_serve, "start tritonserver and the OpenAI frontend")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
        command.add_argument("--triton-arg", action="append", help="extra tritonserver argument (repeatable)")
        _add_ports(command)
        if name == "serve":
            command.add_argument("--host", help="the frontend's address (default: DGATE_HOST, else 127.0.0.1)")
            command.add_argument("--port", type=int, help="the frontend's port (default: DGATE_PORT, else 9000)")
        command.set_defaults(func=func)

    frontend = sub.add_parser("frontend", help="start the OpenAI frontend against a running Triton")
    frontend.add_argument("--triton-url", help="Triton gRPC address, e.g. 127.0.0.1:8001")
    frontend.add_argument("--host")
    frontend.add_argument("--port", type=int)
    frontend.set_defaults(func=cmd_frontend)

    keys = sub.add_parser("keys", help="API keys of the frontend (DGATE_API_KEYS_FILE)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    keys_hash = keys_sub.add_parser("hash", help="print the keys file's line for a key read from stdin, or for a "
                                    "new random key (--new: the key itself goes to stderr, once)")
    keys_hash.add_argument("--new", action="store_true", help="generate a new key (256 random bits)")
    keys_hash.add_argument("--name", help="a name for logs (and quotas)")
    keys_hash.add_argument("--role", choices=("user", "admin"), default="user",
                           help="admin: may also manage LoRA adapters")
    keys_hash.add_argument("--scrypt", action="store_true",
                           help="hash with scrypt instead of SHA-256 (for keys people chose; costs tens of ms "
                                "per first use)")
    keys_hash.set_defaults(func=cmd_keys_hash)

    designs = sub.add_parser("bench-designs", help="the async image denoiser (one instance) against the blocking "
                             "one (several): throughput, UNet batch, Triton PSS, one run")
    designs.add_argument("--model", type=Path, action="append", required=True,
                         help="pipeline folder(s) exported into each design's repository; the first is measured")
    designs.add_argument("--steps", type=int, default=8)
    designs.add_argument("--size", type=int, default=0, help="default: the pipeline's default size")
    designs.add_argument("--concurrency", type=int, default=32)
    designs.add_argument("--requests", type=int, default=96)
    designs.add_argument("--blocking-instances", type=int, default=4)
    designs.add_argument("--streaming-requests", type=int, default=12,
                         help="requests one at a time, plain and streamed, for the cost of streaming")
    designs.add_argument("--onnx-threads", type=int, default=0)
    designs.set_defaults(func=cmd_bench_designs)
    bench_lora = sub.add_parser("bench-lora", help="LoRA: adapter switch vs model reload, mixed vs single "
                                "adapter throughput")
    bench_lora.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    bench_lora.add_argument("--model", type=Path, default=Path("build/models/tiny-sd"),
                            help="the exported pipeline's diffusers directory (random adapters are made for it)")
    bench_lora.add_argument("--steps", type=int, default=4)
    bench_lora.add_argument("--size", type=int, default=64)
    bench_lora.add_argument("--concurrency", type=int, default=8)
    bench_lora.add_argument("--requests", type=int, default=48, help="requests per traffic mix (two halves)")
    bench_lora.add_argument("--rounds", type=int, default=20, help="switches measured per adapter")
    bench_lora.add_argument("--reloads", type=int, default=5)
    bench_lora.set_defaults(func=cmd_bench_lora)

    from dgate.loadtest.cli import add_parser as add_loadtest

    add_loadtest(sub)
    bench_video = sub.add_parser("bench-video", help="video: served frames/s vs the diffusers pipeline in process")
    bench_video.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    bench_video.add_argument("--model", type=Path, action="append", required=True,
                             help="a video pipeline's diffusers directory, exported into the repository; repeat")
    bench_video.add_argument("--frames", type=int, default=8)
    bench_video.add_argument("--steps", type=int, default=4)
    bench_video.add_argument("--size", type=int, default=64)
    bench_video.add_argument("--requests", type=int, default=4, help="videos per row")
    bench_video.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    bench_video.set_defaults(func=cmd_bench_video)

    bench = sub.add_parser("bench", help="throughput/latency: frontend vs Triton vs in-process diffusers")
    bench.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    bench.add_argument("--model", type=Path, action="append",
                       help="the diffusers pipeline directory a served pipeline was exported from; repeat to "
                            "measure several in one run (default: build/models/tiny-sd)")
    bench.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    bench.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    bench.add_argument("--steps", type=int, default=4)
    bench.add_argument("--size", type=int, default=64)
    bench.set_defaults(func=cmd_bench)

    # argparse only: torch loads when a command runs
    from dgate.bench.quant_bench import add_quant_bench_parser
    from dgate.calibration.cli import add_calibrate_parser
    from dgate.eval.cli import add_eval_parser
    from dgate.finetune.cli import add_finetune_parser
    from dgate.gpu_check.arguments import DESCRIPTION as GPU_CHECK
    from dgate.gpu_check.arguments import add_arguments as add_gpu_check_arguments

    add_finetune_parser(sub)
    add_calibrate_parser(sub)
    add_quant_bench_parser(sub)
    add_eval_parser(sub)
    add_gpu_check_arguments(sub.add_parser("gpu-check", help=GPU_CHECK)).set_defaults(func=cmd_gpu_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
