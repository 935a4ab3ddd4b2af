"""Arrays wherever they live: numpy on the host, torch tensors on the CPU or a GPU.

The core's programs keep a request's tensors on one device (the denoiser instance's): the
conditioning moves there once per request, latents, the scheduler step and CFG stay there, and
component calls take and return tensors (DLPack through BLS on a GPU). Only the finished images,
and the previews a client asked for, cross to the host. On the CPU the same code runs on CPU
tensors, which share memory with the numpy arrays Triton hands over.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_tensor(value: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """A torch tensor on `device` from a numpy array (no copy on the CPU) or a tensor anywhere."""
    tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    return tensor.to(device)


def as_numpy(value: Any) -> np.ndarray:
    """A host numpy array from a numpy array or a tensor on any device."""
    return value if isinstance(value, np.ndarray) else value.detach().cpu().numpy()
