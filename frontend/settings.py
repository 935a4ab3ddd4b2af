"""Frontend configuration: one `FrontendSettings`, read from `DGATE_*` environment variables.

Triton is reached over gRPC (`tritonclient.grpc.aio`), not HTTP:
- `grpc.aio` is native asyncio on one HTTP/2 channel that multiplexes every concurrent request, so
  there is no connection pool to size and no extra event-loop library (`http.aio` needs aiohttp);
- image batches come back as raw bytes in the protobuf (`raw_output_contents`), never as JSON;
- failures carry a status code (UNAVAILABLE, NOT_FOUND, DEADLINE_EXCEEDED) that the engine maps to
  typed errors, instead of parsing HTTP bodies;
- tritonclient raises the gRPC message limit to 2 GiB, so a batch of large images fits in one reply.

Videos API jobs are durable: they live in `jobs_db` (a SQLite file, or PostgreSQL that several
replicas share) and their files in `assets_dir` (a volume every replica mounts), so any replica can
answer for any job and a restarted frontend finishes what was queued.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class FrontendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DGATE_", extra="ignore")

    triton_url: str = Field("127.0.0.1:8001", description="Triton's gRPC endpoint, host:port")
    host: str = Field("127.0.0.1", description="address the frontend listens on")
    port: int = Field(9000, ge=0, le=65535, description="port the frontend listens on")
    default_model: str | None = Field(
        None, description="pipeline used when a request names none; unset: the first loaded one"
    )
    request_timeout_s: float = Field(300.0, gt=0, description="deadline of one generation request in Triton")
    metadata_timeout_s: float = Field(5.0, gt=0, description="deadline of Triton health/config calls")
    url_ttl_s: float = Field(3600.0, gt=0, description="how long images returned as `url` stay fetchable")
    url_store_max_mb: float = Field(512.0, gt=0, description="disk cap of the `url` images this replica "
                                    "wrote; its oldest go first")
    max_prompt_chars: int = Field(4000, ge=1, description="longest prompt accepted, in characters")
    public_base_url: str | None = Field(None, description="absolute base of `url` links; else the request's")
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503 and 429 answers")
    drain_grace_s: float = Field(30.0, ge=0, description="on SIGTERM, how long requests in flight may take to "
                                 "finish while new ones get 503 `shutting_down` (frontend/drain.py); keep "
                                 "Kubernetes' terminationGracePeriodSeconds above it")
    log_level: str = Field("INFO", description="level of the JSON logs on stderr")
    lora_dir: str = Field("build/loras", description="the adapters directory (DGATE_LORA_DIR); Triton reads the same")
    lora_dirs: str | None = Field(None, description="more adapter roots, `:`-separated like PATH (absolute "
                                  "adapter paths may lie under them or the adapters directory); Triton reads the "
                                  "same")
    # API keys (frontend/auth.py); with neither set, auth is off.
    api_keys_file: str | None = Field(None, description="file of API keys, one a line: `<SHA-256 hex or "
                                      "scrypt$...> [name=<n>] [role=admin or user] [requests_per_minute=<n>] "
                                      "[in_flight=<n>] [megapixels_per_day=<x>]` (`dgate keys hash` prints a "
                                      "line); with DGATE_API_KEYS unset too, auth is off")
    api_keys: SecretStr | None = Field(None, description="comma-separated plain API keys, each optionally "
                                       "followed by ` name=<n>` and ` role=admin` (simple setups; the file keeps "
                                       "keys hashed)")
    # Quotas (frontend/quotas.py): defaults for keys without their own; counted in jobs_db, shared by replicas.
    quota_requests_per_minute: int | None = Field(None, ge=1, description="requests per minute of a key without "
                                                  "its own `requests_per_minute=`; unset: no limit")
    quota_in_flight: int | None = Field(None, ge=1, description="requests in flight of a key without its own "
                                        "`in_flight=`; unset: no limit")
    quota_megapixels_per_day: float | None = Field(None, gt=0, description="megapixels per UTC day (images x "
                                                   "width x height, video frames x width x height) of a key "
                                                   "without its own `megapixels_per_day=`; unset: no limit")
    quota_lease_s: float = Field(60.0, gt=0, description="an in-flight count of a replica that stopped renewing "
                                 "it (crashed) expires after this long")
    # Videos API (durable jobs + a worker pool).
    jobs_db: str = Field("sqlite://build/jobs/jobs.db", description="job store URL: sqlite://relative/path.db, "
                         "sqlite:///absolute/path.db or postgresql://user@host:port/db (shared by replicas)")
    assets_dir: str = Field("build/assets", description="video files and `url` images; a volume every "
                            "replica mounts")
    video_workers: int = Field(2, ge=0, description="video jobs this replica runs at once (0: create and serve "
                               "jobs, run none)")
    job_lease_s: float = Field(30.0, gt=0, description="a running job returns to the queue this long after its "
                               "worker stops renewing it (a crashed replica)")
    video_max_attempts: int = Field(2, ge=1, description="claims of one job before it fails as `interrupted`")
    video_ttl_s: int = Field(86400, ge=1, description="how long a finished job and its files are kept")
    poll_after_ms: int = Field(500, ge=1, description="`openai-poll-after-ms` sent while a job runs")
    video_idle_poll_s: float = Field(1.0, gt=0, description="how often an idle worker looks for jobs other "
                                     "replicas queued")
    video_maintenance_s: float = Field(5.0, gt=0, description="how often lost jobs are requeued and expired "
                                       "ones collected")
    max_upload_mb: float = Field(20.0, gt=0, description="largest uploaded file (edits, variations, "
                                 "`input_reference`)")
    max_in_flight_per_pipeline: str | None = Field(None, description="image requests one pipeline may have "
                                                   "in flight on this replica before the next is refused (429 "
                                                   "`pipeline_busy`): `8`, or `sd=8,flux=2`; unset: 4 x the "
                                                   "pipeline's max_images")
    max_queued_video_jobs: int = Field(64, ge=1, description="queued video jobs (all replicas) past which a new "
                                       "one is refused (429 `queue_full`)")
    max_input_pixels: int = Field(4096 * 4096, ge=1, description="largest uploaded image in pixels, read "
                                  "from the header before decoding")
    # Request bounds (frontend/body_limit.py, the request schemas).
    max_body_mb: float = Field(1.0, gt=0, description="largest request body (JSON, a form, a WebSocket "
                               "request), refused with 413 while it is read; a form (multipart, urlencoded) may "
                               "carry DGATE_MAX_UPLOAD_MB (and 1 MB of fields) beyond it")
    max_edit_images: int = Field(16, ge=1, description="images one edit request may make: its `image[]` "
                                 "files x `n` (a 400 naming `n` past it)")
    ws_first_message_timeout_s: float = Field(10.0, gt=0, description="how long a /v1/ws/generate "
                                              "connection may wait for its request message before it is "
                                              "closed (1008, code `timeout`)")
    # The W&B serving log (frontend/serving_log.py): off unless a project is named.
    wandb_project: str | None = Field(None, description="W&B project of the serving log (one row per image "
                                      "request or video job: parameters, status, latencies; no prompts); unset: "
                                      "no log. Needs the wandb package")
    wandb_mode: Literal["offline", "online"] = Field("offline", description="`offline` writes the run under "
                                                     "DGATE_WANDB_DIR only (`wandb sync` uploads it); `online` "
                                                     "sends it to W&B (needs WANDB_API_KEY)")
    wandb_dir: str = Field("build/wandb", description="where the W&B run is written")
    wandb_sample_every: int = Field(100, ge=0, description="log one output image every this many records (0: "
                                    "none)")
    wandb_queue_size: int = Field(1000, ge=1, description="records waiting for the W&B logger; past it they are "
                                  "dropped (dgate_frontend_wandb_dropped_total), never the request slowed")
