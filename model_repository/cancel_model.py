"""`dgate_cancel`: posts request ids on the cancellation board that running denoisers check each step
(see dgate.core.cancellation for why Triton's own cancellation does not reach them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.cancellation import CancellationBoard
from dgate.core.tensors import CANCEL_MODEL, CANCEL_OUTPUT, CANCEL_REQUEST_ID
from dgate.model_repository.triton_io import error_response, input_scalar


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.board = CancellationBoard()

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                self.board.cancel(str(input_scalar(request, CANCEL_REQUEST_ID)))
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(CANCEL_OUTPUT, np.array([True]))]))
            except Exception as error:
                responses.append(error_response(error, request, CANCEL_MODEL))
        return responses
