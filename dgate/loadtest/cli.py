"""`dgate loadtest`: the load run, and the same run with tritonserver killed or SIGTERM sent."""

from __future__ import annotations

import argparse
from pathlib import Path

from dgate.loadtest import FAULTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    command = sub.add_parser("loadtest", help="bounded load (and faults) on a dgate serve that it starts; "
                             "exit 1 on a lost request, a hang, or an answer no plan allows")
    command.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    command.add_argument("--model", action="append", required=True, help="image pipeline to load (repeatable)")
    command.add_argument("--requests", type=int, default=400)
    command.add_argument("--concurrency", type=int, default=32)
    command.add_argument("--steps", type=int, default=2)
    command.add_argument("--stream-share", type=float, default=0.25, help="share of the requests streamed (SSE)")
    command.add_argument("--deadline-s", type=float, default=60.0, help="a request unanswered by then is hung")
    command.add_argument("--fault", choices=(*FAULTS, "all"), default="none",
                         help="kill-triton: kill -9 tritonserver mid-run; sigterm: SIGTERM to dgate serve mid-run")
    command.add_argument("--fault-share", type=float, default=0.3, help="fault once this share is answered")
    command.add_argument("--max-in-flight", help="DGATE_MAX_IN_FLIGHT_PER_PIPELINE of the served frontend")
    command.add_argument("--work-dir", type=Path, default=Path("build/loadtest"))
    command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dgate.loadtest.scenarios import run_fault, unplanned
    from dgate.loadtest.traffic import LoadPlan

    plan = LoadPlan(models=args.model, requests=args.requests, concurrency=args.concurrency, steps=args.steps,
                    stream_share=args.stream_share, deadline_s=args.deadline_s)
    env = {"DGATE_MAX_IN_FLIGHT_PER_PIPELINE": args.max_in_flight} if args.max_in_flight else {}
    failed = False
    for fault in FAULTS if args.fault == "all" else (args.fault,):
        result = run_fault(args.model_repository, args.work_dir / fault, plan, fault,
                           fault_share=args.fault_share, env=env)
        print(result.summary(), flush=True)
        problems = unplanned(result)
        if problems or result.leftovers or result.leaked_regions or (fault == "sigterm" and result.exit_code != 0):
            failed = True
            print(f"  FAILED: {problems or ''} leftovers={result.leftovers} exit={result.exit_code}", flush=True)
    return 1 if failed else 0
