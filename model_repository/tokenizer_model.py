"""Tokenize (prompt, negative prompt) for the text encoder, with the pipeline's own tokenizer."""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from dgate.core.errors import InvalidRequestError
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tokenization import PromptTokenizer
from dgate.model_repository.triton_io import ModelArgs, error_response, input_scalar


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        spec = PipelineSpec.load(model.version_dir / "pipeline.json")
        self.tokenizer = PromptTokenizer.from_directory(model.version_dir / "tokenizer", spec.text_max_length)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                prompt = input_scalar(request, "prompt")
                if not prompt.strip():
                    raise InvalidRequestError("prompt must be a non-empty string", "prompt")
                input_ids, attention_mask = self.tokenizer(prompt, input_scalar(request, "negative_prompt"))
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input_ids", input_ids), pb_utils.Tensor("attention_mask", attention_mask),
                ]))
            except Exception as error:
                responses.append(error_response(error))
        return responses
