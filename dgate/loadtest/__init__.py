"""`dgate loadtest`: bounded load and fault runs against a `dgate serve` (issue 18's runs (c)-(e)).

Nothing is imported here: `dgate`'s parser lists the faults without loading httpx (the frontend image
runs `dgate frontend` without the load-test dependencies)."""

from typing import Literal

Fault = Literal["none", "kill-triton", "sigterm"]
FAULTS: tuple[Fault, ...] = ("none", "kill-triton", "sigterm")
