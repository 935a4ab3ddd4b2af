"""(f) Served: tiny SD exported on each engine present (`dgate export --engine E`, on GPU instances with
`--device gpu` on a GPU) into one repository, served by tritonserver when it is installed, and asked
through the frontend's Triton client (gRPC stream, the async denoiser), against diffusers on the
check's device. Without tritonserver the in-process parity above stands for it and these are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import ExitStack, redirect_stdout
from dataclasses import replace
from typing import Any

import numpy as np

from dgate.gpu_check.parity import Parity, request_values
from dgate.gpu_check.report import CaseResult, pixel_parity, skipped

SECTION = "served"
PIPELINE = "tiny-sd"
ENGINES = ("torch", "onnxruntime", "tensorrt")
REQUEST_TIMEOUT_S = 600.0

logger = logging.getLogger(__name__)


def tritonserver_missing() -> str | None:
    from dgate.triton_server import find_tritonserver

    try:
        find_tritonserver()
    except RuntimeError:
        return "tritonserver is not installed (the NGC image, or the triton-wheel extra): in-process parity only"
    return None


class Served:
    """One repository and one tritonserver for every engine's case, started by the first case."""

    def __init__(self, parity: Parity, stack: ExitStack) -> None:
        self.parity = parity
        self.workspace = parity.workspace
        self.stack = stack
        self._grpc_url: str | None = None
        self._server: Any = None  # the TritonServer, stopped after the last engine's case
        self._names: dict[str, str] = {}  # engine -> served pipeline name

    def engines(self) -> list[str]:
        return [engine for engine in ENGINES if self.workspace.environment.engine_missing(engine) is None]

    def _serve(self) -> str:
        """Export every available engine's pipeline, start tritonserver on them; its gRPC address."""
        if self._grpc_url is not None:
            return self._grpc_url
        from dgate.export.pipeline_export import export_pipeline
        from dgate.export.triton_config import ServingOptions
        from dgate.triton_server import TritonServer, free_ports

        environment = self.workspace.environment
        model = self.workspace.tiny(PIPELINE)
        repository = self.workspace.root / "served" / "repository"
        device = "gpu" if environment.on_gpu else "cpu"
        for engine in self.engines():
            name = f"{PIPELINE}-{engine}"
            # ONNX Runtime's CUDA sessions take no LoRA (refused at export), so no adapters anywhere here.
            options = ServingOptions(engine=engine, device=device, lora=False)
            with redirect_stdout(sys.stderr):  # the export's progress: stdout holds the table
                export_pipeline(str(model.path), repository, name=name, options=options)
            self._names[engine] = name
        ports = free_ports()
        server = TritonServer(repository, ports, log_path=self.workspace.root / "served" / "tritonserver.log")
        server.start()
        self.stack.callback(server.stop)  # if a case fails before the last one stops it
        self._server, self._grpc_url = server, ports.grpc_url
        return self._grpc_url

    def case(self, engine: str) -> CaseResult:
        missing = self.workspace.environment.engine_missing(engine) or tritonserver_missing()
        if missing is not None:
            return skipped(SECTION, PIPELINE, engine, missing)
        grpc_url = self._serve()
        model = self.workspace.tiny(PIPELINE)
        values = request_values(model, self.parity.steps)
        try:
            served = asyncio.run(_generate(grpc_url, self._names[engine], values))
        finally:
            if engine == self.engines()[-1]:  # the timed sections after this run on a quiet machine
                self._server.stop()
        result = pixel_parity(SECTION, PIPELINE, engine, served, self.parity.reference(model, values))
        result.values["steps"] = self.parity.steps
        return replace(result, figure=f"{result.figure} through tritonserver")


async def _generate(grpc_url: str, name: str, values: dict[str, Any]) -> np.ndarray:
    from dgate.core.params import GenerationParams
    from dgate.frontend.engine.triton import TritonEngine

    fields = GenerationParams.__dataclass_fields__
    engine = TritonEngine(grpc_url, request_timeout_s=REQUEST_TIMEOUT_S)
    try:
        return await engine.generate(name, GenerationParams(**{k: v for k, v in values.items() if k in fields}))
    finally:
        await engine.close()
