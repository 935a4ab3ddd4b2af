"""Frontend configuration: one `FrontendSettings`, read from `DGATE_*` environment variables.

Triton is reached over gRPC (`tritonclient.grpc.aio`), not HTTP:
- `grpc.aio` is native asyncio on one HTTP/2 channel that multiplexes every concurrent request, so
  there is no connection pool to size and no extra event-loop library (`http.aio` needs aiohttp);
- image batches come back as raw bytes in the protobuf (`raw_output_contents`), never as JSON;
- failures carry a status code (UNAVAILABLE, NOT_FOUND, DEADLINE_EXCEEDED) that the engine maps to
  typed errors, instead of parsing HTTP bodies;
- tritonclient raises the gRPC message limit to 2 GiB, so a batch of large images fits in one reply.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FrontendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DGATE_", extra="ignore")

    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC endpoint, host:port")
    host: str = "127.0.0.1"
    port: int = Field(9000, ge=0, le=65535)
    default_model: str | None = Field(
        None, description="pipeline used when a request names none; None = first"
    )
    request_timeout_s: float = Field(300.0, gt=0, description="deadline of one generation request in Triton")
    metadata_timeout_s: float = Field(5.0, gt=0, description="deadline of Triton health/config calls")
    url_ttl_s: float = Field(3600.0, gt=0, description="how long images returned as `url` stay fetchable")
    url_store_max_mb: float = Field(512.0, gt=0, description="memory cap of `url` images; oldest go first")
    max_prompt_chars: int = Field(4000, ge=1)
    public_base_url: str | None = Field(None, description="absolute base of `url` links; else the request's")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 answers")
    log_level: str = "INFO"
    lora_dir: str = Field("build/loras", description="the adapters directory (DGATE_LORA_DIR); Triton reads the same")
