"""What the routers share, stored once on `app.state.dgate` and handed to them as a dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from dgate.frontend.admission import Admission
from dgate.frontend.assets import AssetStore
from dgate.frontend.auth import KeyRing
from dgate.frontend.engine import Engine
from dgate.frontend.image_store import ImageStore
from dgate.frontend.lora_registry import LoraRegistry
from dgate.frontend.metrics import Metrics
from dgate.frontend.settings import FrontendSettings
from dgate.frontend.video.service import VideoService


@dataclass(frozen=True)
class AppState:
    settings: FrontendSettings
    engine: Engine
    store: ImageStore
    metrics: Metrics
    started: int  # unix time; the `created` of model objects (Triton does not report load times)
    loras: LoraRegistry
    assets: AssetStore  # the shared directory of video files and `url` images
    videos: VideoService
    keys: KeyRing  # the API keys; empty: auth is off
    admission: Admission  # this replica's image requests in flight per pipeline


def app_state(request: Request) -> AppState:
    return request.app.state.dgate


# Route parameter type: `state: State` injects the app's AppState.
State = Annotated[AppState, Depends(app_state)]
