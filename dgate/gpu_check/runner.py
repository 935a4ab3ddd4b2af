"""`dgate gpu-check`: the plan of cases for this machine, running them, the table and the report."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from dgate.gpu_check import batching, full_size, graphs, lora, parity, served
from dgate.gpu_check.arguments import DESCRIPTION, add_arguments
from dgate.gpu_check.environment import Environment
from dgate.gpu_check.report import FAIL, PIXEL_BOUND, CaseResult, exit_code, report, skipped, table, write_report
from dgate.gpu_check.workspace import Workspace

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    device: str  # "cpu" | "cuda"
    workdir: Path | None  # None: a temporary folder, removed afterwards
    out: Path
    full_size: bool

    @property
    def tiny_steps(self) -> int:
        return 10 if self.device == "cuda" else 3

    @property
    def repeats(self) -> int:
        """Timed runs of each full-size request (their median)."""
        return 2 if self.device == "cuda" else 1

    @property
    def batch_repeats(self) -> int:
        return 5 if self.device == "cuda" else 3


@dataclass(frozen=True)
class Case:
    section: str
    case: str
    engine: str
    run: Callable[[], CaseResult]

    def result(self) -> CaseResult:
        """The case's result; an error fails this case only, with its message as the reason."""
        try:
            return self.run()
        except Exception as error:  # noqa: BLE001 - reported as the case's failure, the check goes on
            logger.debug("%s %s %s failed:\n%s", self.section, self.case, self.engine, traceback.format_exc())
            message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            return CaseResult(self.section, self.case, self.engine, FAIL, f"error: {message}", message)


def _given(result: CaseResult) -> CaseResult:
    return result


def plan(options: Options, environment: Environment, workspace: Workspace,
         models: full_size.FullSizeModels, stack: ExitStack) -> list[Case]:
    """Every case of the check, in the table's order; missing pieces become skipped cases. `stack`
    stops what the cases start (the served section's tritonserver)."""
    cases: list[Case] = []
    checks = parity.Parity(workspace, options.tiny_steps)
    for name in parity.PIPELINES:
        for engine in parity.ENGINES:
            missing = checks.skip(name, engine)
            run = partial(checks.fp32, name, engine) if missing is None else partial(_given, missing)
            cases.append(Case(parity.SECTION, name, engine, run))
        if environment.on_gpu:
            cases.append(Case(parity.SECTION, name, parity.FP16_ENGINE, partial(checks.fp16, name)))
    through_triton = served.Served(checks, stack)
    for engine in served.ENGINES:
        cases.append(Case(served.SECTION, served.PIPELINE, engine, partial(through_triton.case, engine)))
    for engine in lora.ENGINES:
        cases.append(Case(lora.SECTION, lora.PIPELINE, engine, partial(lora.lora_case, workspace, engine)))
    cases.append(Case(graphs.SECTION, graphs.PIPELINE, graphs.ENGINE, partial(graphs.graphs_case, workspace)))
    case = "INT8/FP8 denoiser"
    cases.append(Case("quantized", case, "tensorrt",
                      partial(_given, skipped("quantized", case, "tensorrt", environment.quantized_missing()))))
    if options.full_size:
        engine = "torch fp16" if environment.on_gpu else "torch"
        for name, size, steps, guidance in full_size.CASES:
            cases.append(Case(full_size.SECTION, full_size.case_name(name, size, steps), engine,
                              partial(full_size.full_size_case, models, name, size, steps, guidance, options.repeats)))
    else:
        case, reason = "full-sd15, full-sdxl", "off (--full-size runs it; on by default on cuda only)"
        cases.append(Case(full_size.SECTION, case, "torch", partial(_given, skipped(full_size.SECTION, case, "torch",
                                                                                    reason))))
    cases += batching_cases(options, environment, workspace, models)
    return cases


def batching_cases(options: Options, environment: Environment, workspace: Workspace,
                   models: full_size.FullSizeModels) -> list[Case]:
    """The tiny SD UNet on the CPU, SD 1.5's full-size one on a GPU (FP16), on the torch engine."""
    gpu = environment.on_gpu
    name = "full-sd15" if gpu else "tiny-sd"
    label = "torch fp16" if gpu else "torch"

    def one(batch: int) -> CaseResult:
        if gpu:
            model = models.get(name)
            spec, denoiser, size = model.spec, model.engines[model.spec.denoiser_component], 512
        else:
            tiny = workspace.tiny(name)
            spec = tiny.spec
            denoiser, size = workspace.load(tiny, "torch", spec.denoiser_component), spec.limits.default_height
        return batching.batching_case(name, label, denoiser, spec, batch, size, environment.device,
                                      options.batch_repeats)

    return [Case(batching.SECTION, batching.case_name(name, batch), label, partial(one, batch))
            for batch in batching.BATCHES]


def run_checks(options: Options) -> tuple[list[CaseResult], dict]:
    """Run every case; (the results, the JSON report)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    environment = Environment.detect(options.device)
    with ExitStack() as stack:
        root = options.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dgate-gpu-check-")))
        root.mkdir(parents=True, exist_ok=True)
        workspace = Workspace(root, environment)
        models = full_size.FullSizeModels(environment)
        stack.callback(models.release)
        cases = plan(options, environment, workspace, models, stack)
        results = []
        progress = tqdm(cases, desc="gpu-check", unit="case", file=sys.stderr)
        for case in progress:
            progress.set_postfix_str(f"{case.section} {case.case} {case.engine}")
            results.append(case.result())
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in asdict(options).items()}
    settings |= {"tiny_steps": options.tiny_steps, "parity_pixel_bound": PIXEL_BOUND}
    return results, report(results, environment.describe(), settings, time.perf_counter() - started)


def options_from(args: argparse.Namespace) -> Options:
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("dgate gpu-check: --device cuda, but torch sees no CUDA device")
    full = args.full_size if args.full_size is not None else device == "cuda"
    return Options(device, args.workdir, args.out, full)


def run(args: argparse.Namespace) -> int:
    """The command: run the check, print one table, write the report; nonzero when a case failed."""
    options = options_from(args)
    results, content = run_checks(options)
    write_report(options.out, content)
    print(table(results))
    print(f"report: {options.out}  ({content['wall_s']:.0f} s)")
    return exit_code(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dgate.gpu_check", description=DESCRIPTION)
    return run(add_arguments(parser).parse_args(argv))
