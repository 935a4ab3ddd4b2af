"""monitoring/: the Prometheus config, the alert rules and the Grafana dashboard, checked by promtool and
then run by a real Prometheus scraping a real Triton and frontend.

Unit tier: `promtool check config`, `check rules` and `test rules` (monitoring/alerts_test.yml), the
dashboard's structure, and every dashboard query parsed by promtool. e2e tier (the session's
tritonserver): Prometheus on loopback scrapes it and two frontends every second while the openai client
sends tiny-sd images and two requests that time out (504); the test reads the series back through
Prometheus' HTTP API, watches the error-ratio alert fire, and runs every dashboard query.

promtool and prometheus come from Debian's package (`make prometheus`, a prerequisite of `make test`):
a missing binary fails, never skips, or these checks would pass without running.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from frontend_fixtures import make_client, start_frontend

from dgate.frontend.metrics import Metrics
from dgate.frontend.settings import FrontendSettings
from dgate.monitor import PrometheusServer, render_config

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "dgate.json"
PROVISIONING = MONITORING / "grafana" / "provisioning"

# Dashboard panels the test traffic (tiny-sd images on a CPU Triton) cannot feed: every other panel must
# return a finite value in each of its queries, once the frontend defines the metrics it reads.
NOT_EXERCISED = frozenset({
    "Admission refusals per second (429)",
    "Video jobs by state", "Video jobs finished per second", "Video frames per second",
    "Video queue wait (p50, p95, p99)",
    "LoRA adapters used per second", "LoRA switches per second",
    "GPU utilisation", "GPU memory",
})
# Grafana's variables, as the dashboard's "All" and a rate window over several 1 s scrapes.
VARIABLES = {"$__rate_interval": "1m", "$triton_model": ".*", "$model": ".*"}
METRIC_NAME = re.compile(r"\b(?:dgate_frontend|nv)_[a-z0-9_]+\b")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make prometheus` installs Debian's prometheus package")
    return path


def promtool(*args: str) -> str:
    result = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def query_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def substitute(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def defined_metric_names() -> set[str]:
    """The exposition names (`_total`, `_bucket`...) of every metric the frontend's code defines, even
    those with no sample yet (a labelled metric shows none until its first label set)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in suffixes.get(family.type, ("",))}


# --- unit tier: promtool and the dashboard's structure -------------------------------------------------------


def test_promtool_checks_the_prometheus_config_and_its_rule_file() -> None:
    out = promtool("check", "config", str(CONFIG))
    assert "is valid prometheus config file syntax" in out and "1 rule files found" in out, out


def test_promtool_checks_the_alert_rules() -> None:
    out = promtool("check", "rules", str(ALERTS))
    assert re.search(r"SUCCESS: \d+ rules found", out), out


def test_promtool_runs_the_alert_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(ALERTS_TEST))


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    fired: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else silent).add(case["alertname"])
    assert alerts, "no alerts in alerts.yml"
    assert alerts - fired == set(), f"alerts no unit test fires: {sorted(alerts - fired)}"
    assert alerts - silent == set(), f"alerts no unit test keeps silent: {sorted(alerts - silent)}"
    assert (fired | silent) - alerts == set(), f"tests of alerts that do not exist: {sorted((fired | silent) - alerts)}"


def test_prometheus_config_scrapes_triton_and_the_frontend_with_the_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["triton"]["static_configs"][0]["targets"] == ["127.0.0.1:8002"]  # dgate serve's --metrics-port
    assert jobs["frontend"]["static_configs"][0]["targets"] == ["127.0.0.1:9000"]  # DGATE_PORT's default
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())
    assert config["rule_files"] == [ALERTS.name]


def test_dashboard_structure_and_datasource_match_the_provisioning() -> None:
    board = dashboard()
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    uid = datasources[0]["uid"]
    assert datasources[0]["type"] == "prometheus"
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "dgate.yml").read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"]
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36

    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    titles = [panel["title"] for panel in query_panels()]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    assert NOT_EXERCISED <= set(titles), f"NOT_EXERCISED names no panel: {sorted(NOT_EXERCISED - set(titles))}"
    defined_variables = {"$" + variable["name"] for variable in board["templating"]["list"]}
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid, variable["name"]
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    for panel in query_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        targets = panel["targets"]
        assert targets, f"panel {panel['title']!r} has no query"
        assert len({target["refId"] for target in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == uid and target["expr"].strip(), panel["title"]
            used = set(re.findall(r"\$[a-z_]+", target["expr"])) - {"$__rate_interval"}
            assert used <= defined_variables, f"{panel['title']}: undefined variables {used - defined_variables}"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule's expression: a syntax error fails here, without a server."""
    rules = [{"record": f"dashboard:query:{index}", "expr": substitute(target["expr"])}
             for index, target in enumerate(t for panel in query_panels() for t in panel["targets"])]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))


def test_the_dashboard_and_the_alerts_read_only_metrics_the_frontend_defines() -> None:
    """A renamed frontend metric would leave a panel empty and an alert silent without any error."""
    texts = [ALERTS.read_text()] + [t["expr"] for panel in query_panels() for t in panel["targets"]]
    used = {name for text in texts for name in METRIC_NAME.findall(text) if name.startswith("dgate_frontend_")}
    assert len(used) > 10, used
    undefined = used - defined_metric_names()
    assert undefined == set(), f"not defined in frontend/metrics.py: {sorted(undefined)}"


def test_render_config_points_the_jobs_at_other_addresses(tmp_path: Path) -> None:
    config = render_config(CONFIG, {"triton": ["127.0.0.1:18002"], "frontend": ["127.0.0.1:1", "127.0.0.1:2"]},
                           interval="1s")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["triton"]["static_configs"] == [{"targets": ["127.0.0.1:18002"]}]
    assert jobs["frontend"]["static_configs"] == [{"targets": ["127.0.0.1:1", "127.0.0.1:2"]}]
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    assert config["rule_files"] == [str(ALERTS.resolve())]
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(yaml.safe_dump(config))
    promtool("check", "config", str(rendered))
    with pytest.raises(ValueError, match="no scrape job"):
        render_config(CONFIG, {"tritonn": ["127.0.0.1:1"]})


# --- e2e tier: a real Prometheus on a real Triton and frontend ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: a bad query; the body says why
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        result: list[dict[str, Any]] = data["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one value of `expr`, or None when it has no series."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.get("/api/v1/alerts")["alerts"]
        return found


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy (scrapes and rule evaluations come every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what} (last: {result!r})")
        time.sleep(0.5)


@dataclass
class Stack:
    api: PrometheusAPI
    triton: Any
    frontend: str
    slow_frontend: str  # request_timeout_s too short for any generation: every image request is a 504


@pytest.fixture(scope="module")
def stack(triton: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    grpc = triton.ports.grpc_url
    frontend, stop_frontend = start_frontend(FrontendSettings(triton_url=grpc, video_workers=0))
    slow, stop_slow = start_frontend(FrontendSettings(triton_url=grpc, video_workers=0, request_timeout_s=0.001))
    workdir = tmp_path_factory.mktemp("prometheus")
    # The shipped rules with every `for` at 0 s, so that a condition the traffic makes true fires at the
    # next evaluation instead of in minutes.
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    rules_path = workdir / "alerts.yml"
    rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
    targets = {"triton": [f"127.0.0.1:{triton.ports.metrics}"],
               "frontend": [frontend.removeprefix("http://"), slow.removeprefix("http://")]}
    config = render_config(CONFIG, targets, interval="1s", rule_files=[rules_path])
    server = PrometheusServer(config, workdir, f"127.0.0.1:{free_port()}")
    try:
        server.start()
        yield Stack(PrometheusAPI(server.url), triton, frontend, slow)
    finally:
        server.stop()
        stop_slow()
        stop_frontend()


IMAGES = 3  # tiny-sd at 64x64, 2 steps each
ROUTE = "/v1/images/generations"


def generate(base_url: str) -> None:
    with make_client(base_url) as client:
        client.images.generate(model="tiny-sd", prompt="a red fox in the snow", size="64x64",
                               extra_body={"num_inference_steps": 2})


def timed_out(base_url: str) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        generate(base_url)
    assert caught.value.status_code == 504


@pytest.fixture(scope="module")
def traffic(stack: Stack) -> Stack:
    """Every target up, then the images and two 504s. A frontend series enters Prometheus at its first
    event, which rate() cannot see: the rest of the images come after Prometheus has scraped the first
    one, and the second 504 after it has scraped the first, so that every counter and histogram moves."""
    api = stack.api
    eventually(lambda: api.value('count(up{job=~"triton|frontend"} == 1)') == 3, "three targets up")
    generate(stack.frontend)
    eventually(lambda: api.value('sum(dgate_frontend_images_generated_total{model="tiny-sd"})') == 1,
               "the first image scraped")
    for _ in range(IMAGES - 1):
        generate(stack.frontend)
    timed_out(stack.slow_frontend)
    eventually(lambda: api.value(f'sum(dgate_frontend_requests_total{{route="{ROUTE}",status="504"}})') == 1,
               "the first 504 scraped")
    timed_out(stack.slow_frontend)
    return stack


def test_prometheus_counts_exactly_the_requests_sent(traffic: Stack) -> None:
    api = traffic.api

    def counts() -> dict[str, float] | None:
        by_status = {r["metric"]["status"]: float(r["value"][1]) for r in api.query(
            'sum by (status) (dgate_frontend_requests_total{route=~"/v1/.+"})')}
        return by_status if by_status.get("504") == 2 and by_status.get("200") == IMAGES else None

    by_status = eventually(counts, "the requests scraped")
    assert by_status == {"200": IMAGES, "504": 2}, by_status
    per_frontend = {r["metric"]["instance"]: float(r["value"][1]) for r in api.query(
        f'sum by (instance) (dgate_frontend_requests_total{{route="{ROUTE}"}})')}
    assert per_frontend == {traffic.frontend.removeprefix("http://"): IMAGES,
                            traffic.slow_frontend.removeprefix("http://"): 2}, per_frontend
    assert api.value('sum(dgate_frontend_images_generated_total{model="tiny-sd"})') == IMAGES
    print(f"\nfrontend requests by status, read back from Prometheus: {by_status}")


def test_triton_queue_and_compute_series_of_tiny_sd_are_scraped(traffic: Stack) -> None:
    api = traffic.api
    measured: dict[str, dict[str, float]] = {}
    for model in ("tiny-sd_denoiser", "tiny-sd_unet"):
        values: dict[str, float] = {}
        for metric in ("nv_inference_request_success", "nv_inference_exec_count", "nv_inference_count",
                       "nv_inference_queue_duration_us", "nv_inference_compute_input_duration_us",
                       "nv_inference_compute_infer_duration_us", "nv_inference_compute_output_duration_us"):
            value = api.value(f'sum({metric}{{job="triton",model="{model}"}})')
            assert value is not None, f"{metric} of {model} was not scraped"
            values[metric] = value
        measured[model] = values
        # Every image ran the denoiser once, and its UNet at least once per step (Triton counts the
        # tests before this module too: the tritonserver is the session's).
        assert values["nv_inference_request_success"] >= IMAGES * (2 if model.endswith("unet") else 1), values
        assert values["nv_inference_compute_infer_duration_us"] > 0, values
    print(f"\nTriton series read back from Prometheus: {json.dumps(measured, indent=1)}")


def test_an_induced_error_makes_the_error_ratio_alert_fire(traffic: Stack) -> None:
    api = traffic.api

    def error_ratio_alert() -> dict[str, Any] | None:
        return next((a for a in api.alerts() if a["labels"]["alertname"] == "DGateFrontendErrorRatioHigh"), None)

    alert = eventually(error_ratio_alert, "DGateFrontendErrorRatioHigh pending or firing")
    assert alert["state"] in ("pending", "firing"), alert
    assert alert["labels"]["severity"] == "critical"
    ratio = float(alert["value"])
    assert 0.05 < ratio < 1, alert  # 504s among 200s: both counters moved in the window
    alerts = api.alerts()
    names = {a["labels"]["alertname"] for a in alerts}
    # Triton and both frontends are up: their availability alerts must stay silent.
    assert not names & {"DGateNoTritonUp", "DGateFrontendDown"}, names
    print(f"\nerror ratio {ratio:.3f}; alerts read back: "
          f"{sorted((a['labels']['alertname'], a['labels'].get('model', ''), a['state']) for a in alerts)}")


def test_every_dashboard_query_runs_and_the_exercised_panels_have_data(traffic: Stack) -> None:
    api = traffic.api
    # The scrapes after the traffic, so that rate() windows hold it.
    eventually(lambda: api.value(f'sum(dgate_frontend_requests_total{{route="{ROUTE}",status="504"}})') == 2,
               "the second 504 scraped")
    empty, ran = [], 0
    for panel in query_panels():
        for target in panel["targets"]:
            expr = substitute(target["expr"])
            result = api.query(expr)  # a query Prometheus refuses fails here
            ran += 1
            if panel["title"] not in NOT_EXERCISED and not any(math.isfinite(float(r["value"][1])) for r in result):
                empty.append(f"{panel['title']} [{target['refId']}]: {expr} -> {result}")
    assert not empty, "exercised panels without data:\n" + "\n".join(empty)
    print(f"\n{ran} dashboard queries ran, those of {len(query_panels()) - len(NOT_EXERCISED)} panels with data")
