"""Tokenize (prompt, negative prompt) for every text encoder, with the pipeline's own tokenizers.

Imports only `tokenizers` and numpy (no transformers, no torch): one instance is ~40 MB, not ~280.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from dgate.core.limits import check_prompt
from dgate.core.pipeline_spec import PipelineSpec
from dgate.core.tokenization import PromptTokenizer
from dgate.model_repository.triton_io import ModelArgs, error_response, input_scalar


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.name = model.name
        self.spec = PipelineSpec.load(model.version_dir / "pipeline.json")
        self.tokenizers = {
            encoder.component: PromptTokenizer.from_directory(model.version_dir / encoder.tokenizer,
                                                              encoder.pad_token_id)
            for encoder in self.spec.text_encoders
        }

    def _tokenize(self, request: Any) -> list[Any]:
        prompt = input_scalar(request, "prompt")
        check_prompt(prompt)
        texts = [input_scalar(request, "negative_prompt"), prompt]  # row 0: the negative prompt
        t5_length = self.spec.limits.sequence_length_for(int(input_scalar(request, "max_sequence_length")))
        lora = input_scalar(request, "lora").encode()
        tensors = [pb_utils.Tensor("lora_rows", np.array([[lora]] * len(texts), dtype=np.object_))]
        for encoder in self.spec.text_encoders:
            length = t5_length if encoder.variable_length else encoder.max_length
            ids, mask = self.tokenizers[encoder.component](texts, max(1, length))
            tensors += [pb_utils.Tensor(f"{encoder.component}_input_ids", ids),
                        pb_utils.Tensor(f"{encoder.component}_attention_mask", mask)]
        return tensors

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._tokenize(request)))
            except Exception as error:
                responses.append(error_response(error, request, self.name))
        return responses
