"""The image denoiser, async design (the default): one instance serves every request of its pipeline.

The model is decoupled and its `execute` is a coroutine: python_backend runs it on an asyncio loop
and hands the instance the next requests while earlier ones wait on their BLS calls
(`await request.async_exec()`), so many requests' steps are in flight at once and meet in the
UNet's dynamic batcher (what took one process per in-flight request in the blocking design).
Being decoupled, it can also answer a request several times: `progress` after every step and
partial images when the client asked for them, then `images`; the ensemble passes each response
on to the client's gRPC stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import triton_python_backend_utils as pb_utils

from dgate.core.program import Arrays, run_async
from dgate.core.tensors import ENSEMBLE_OUTPUT
from dgate.model_repository.image_denoiser import ImageDenoiser
from dgate.model_repository.triton_io import error_response

# async_exec runs each BLS call on the event loop's default executor, whose default size,
# min(32, cores + 4), would cap the calls in flight (6 on 2 cores, so 6 requests' steps per batch).
BLS_THREADS = 256


class TritonPythonModel(ImageDenoiser):
    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        self._executor_set = False

    async def _run(self, request: Any) -> None:
        sender = request.get_response_sender()

        def send(tensors: list[Any]) -> None:
            sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

        try:
            image_request = self.read(request)
            if image_request.lora:
                self.check_adapters_response(await self.adapter_check(image_request.lora).async_exec())

            async def call(component: str, inputs: Arrays) -> Arrays:
                bls = self.component_request(component, inputs, image_request.lora)
                return self.component_outputs(component, await bls.async_exec())

            images = await run_async(self.program(request, image_request, send), call)
            sender.send(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(ENSEMBLE_OUTPUT.name, images)]),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as error:
            sender.send(error_response(error, request, self.args.name),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            self.cancellations.clear(request.request_id())

    async def execute(self, requests: list[Any]) -> None:
        if not self._executor_set:
            asyncio.get_running_loop().set_default_executor(
                concurrent.futures.ThreadPoolExecutor(BLS_THREADS, thread_name_prefix="dgate-bls"))
            self._executor_set = True
        await asyncio.gather(*(self._run(request) for request in requests))
        return None
