"""D-Gate: diffusion pipelines served by Triton behind an OpenAI-compatible frontend."""

from dgate import torchvision_ops

torchvision_ops.install()  # before anything can import transformers (see torchvision_ops)
