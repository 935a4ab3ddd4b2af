"""The FastAPI application: wiring only (state, middleware, error handlers, routers) and `run()`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI
from prometheus_client.registry import Collector

from dgate.frontend.admission import Admission
from dgate.frontend.assets import AssetStore
from dgate.frontend.auth import AuthMiddleware, Quota, caller, load_keys, log_auth_mode
from dgate.frontend.body_limit import BodyLimitMiddleware
from dgate.frontend.drain import CLOSE_CONNECTIONS_S, DrainingServer, DrainMiddleware, Lifecycle
from dgate.frontend.engine import Engine, TritonEngine
from dgate.frontend.errors import document_errors, install_exception_handlers
from dgate.frontend.image_store import ImageStore
from dgate.frontend.logs import configure_logging
from dgate.frontend.lora_registry import LoraRegistry
from dgate.frontend.metrics import Metrics
from dgate.frontend.middleware import RequestMiddleware
from dgate.frontend.quotas import QuotaMiddleware, Quotas
from dgate.frontend.routers import files, health, image_edits, images, loras, models, playground, videos, ws
from dgate.frontend.serving_log import ServingLog
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.state import AppState
from dgate.frontend.uploads import FIELDS_BYTES
from dgate.frontend.video.service import VideoService


def create_app(settings: FrontendSettings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app; `engine` is injected by tests, else a Triton engine is made from `settings`.

    The video job store (`settings.jobs_db`) opens and the video workers start in the lifespan, so
    serve the app with lifespan events on (uvicorn's default)."""
    settings = settings or FrontendSettings()
    api_keys = settings.api_keys.get_secret_value() if settings.api_keys is not None else None
    keys = load_keys(settings.api_keys_file, api_keys)  # a malformed entry stops the start here
    triton = None
    if engine is None:
        triton = TritonEngine(
            settings.triton_url,
            request_timeout_s=settings.request_timeout_s,
            metadata_timeout_s=settings.metadata_timeout_s,
        )
        engine = triton

    metrics = Metrics()
    serving_log = ServingLog.from_settings(settings, metrics)  # DGATE_WANDB_PROJECT: the W&B serving log
    if serving_log is not None:
        metrics.sinks.append(serving_log)
    assets = AssetStore(Path(settings.assets_dir))
    store = ImageStore(assets, settings.url_ttl_s, int(settings.url_store_max_mb * 2**20))
    video_service = VideoService(settings, engine, assets, store, metrics)
    quotas = Quotas(Quota(settings.quota_requests_per_minute, settings.quota_in_flight,
                          settings.quota_megapixels_per_day), enabled=keys.enabled, db_url=settings.jobs_db,
                    lease_s=settings.quota_lease_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_auth_mode(keys)  # a loud warning when auth is off
        if serving_log is not None:
            serving_log.start()
        await video_service.open()  # the job store, recovery of lost jobs, the video workers
        await quotas.open()  # the quota tables, beside the jobs
        await app.state.dgate.loras.open()  # the LoRA state, beside the jobs (shared by replicas)
        try:
            yield
        finally:
            await app.state.dgate.loras.close()
            await quotas.close()
            await video_service.close()
            if serving_log is not None:  # after the workers: their last jobs are logged too
                await asyncio.to_thread(serving_log.close)
            if triton is not None:  # an injected engine belongs to its caller
                await triton.close()

    app = FastAPI(
        title="D-Gate",
        summary="OpenAI-compatible image and video generation over NVIDIA Triton Inference Server",
        lifespan=lifespan,
    )
    app.state.dgate = AppState(
        settings=settings,
        engine=engine,
        store=store,
        metrics=metrics,
        started=int(time.time()),
        loras=LoraRegistry.from_settings(settings),
        assets=assets,
        videos=video_service,
        keys=keys,
        admission=Admission(settings.max_in_flight_per_pipeline, retry_after_s=settings.retry_after_s,
                            metrics=metrics),
    )
    install_exception_handlers(app, retry_after_s=settings.retry_after_s)
    document_errors(app)
    # Open without a key: probes and metrics (Prometheus scrapes without credentials; they carry counts
    # and route templates only), the playground page and docs (no data), and the `url` images (unguessable,
    # expiring links an <img> can load). Added first: the request middleware outside it logs the 401s.
    docs = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    app.state.quotas = quotas  # tests set its clock
    app.add_middleware(QuotaMiddleware, quotas=quotas)  # inside auth: it reads the verified key
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=int(settings.max_body_mb * 2**20),
                       form_extra_bytes=int(settings.max_upload_mb * 2**20) + FIELDS_BYTES)  # inside auth
    app.add_middleware(AuthMiddleware, keys=keys, open_paths={"/health", "/ready", "/metrics", "/"} | {
        path for path in docs if path}, open_prefixes=("/static/", "/v1/files/"))
    app.state.lifecycle = Lifecycle()  # requests in flight; draining after SIGTERM
    app.add_middleware(DrainMiddleware, lifecycle=app.state.lifecycle, retry_after_s=settings.retry_after_s)
    app.add_middleware(RequestMiddleware, metrics=metrics)
    for module in (images, image_edits, ws, videos, models, files, health, loras):
        keyed = module in (images, image_edits, videos, models, loras)  # /docs shows them with the Bearer scheme
        app.include_router(module.router, dependencies=[Depends(caller)] if keyed else None)
    app.include_router(playground.router)  # GET / and /static/: the browser playground
    return app


def run(settings: FrontendSettings | None = None, collectors: Sequence[Collector] = ()) -> None:
    """Serve until stopped (used by `dgate frontend` and `dgate serve`): SIGTERM drains first
    (frontend/drain.py), Ctrl-C stops as uvicorn does. `collectors` add series to /metrics."""
    settings = settings or FrontendSettings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    for collector in collectors:
        app.state.dgate.metrics.registry.register(collector)
    # Our middleware writes the access log as JSON; uvicorn's own would duplicate it as text.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=CLOSE_CONNECTIONS_S)
    DrainingServer(config, app.state.lifecycle, settings.drain_grace_s).run()
