"""Deployment files, checked without Docker or a cluster: both Dockerfiles linted, the Triton
entrypoint run against stand-in binaries, every helm-free-k8s overlay rendered by kustomize and
validated against the Kubernetes schemas, and what no schema can say (probes, security contexts, no
literal secrets, who may reach which port) read from the rendered objects. The frontend image's
promise, no torch, is checked by importing the whole frontend where torch cannot be imported."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "helm-free-k8s"
OVERLAYS = ("gpu", "cpu", "eks")
GPU_OVERLAYS = ("gpu", "eks")
KUBERNETES_VERSION = "1.34"  # the oldest minor the manifests promise to run on
ENTRYPOINT = ROOT / "docker" / "triton-entrypoint.sh"


def tool(name: str) -> str:
    """A tool of the test extra: beside this Python (the venv) or on PATH; missing is a failure."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    assert found, f"{name} not found beside {sys.executable} or on PATH (the test extra installs it)"
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


# --- Dockerfiles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile.triton", "Dockerfile.frontend"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    result = run([tool("hadolint"), str(ROOT / dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / dockerfile).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", joined, re.M)]


def pip_install_targets(dockerfile: str) -> list[str]:
    """The local project targets (`.` or `.[extras]`) of every `pip install` in RUN lines."""
    targets = []
    for op, args in instructions(dockerfile):
        if op == "RUN":
            for command in re.split(r"&&|;", args):
                if re.search(r"\bpip install\b", command):
                    targets += [word.strip("'\"") for word in command.split() if word.strip("'\"").startswith(".")]
    return targets


def extras_of(target: str) -> set[str]:
    match = re.fullmatch(r"\.(?:\[([^\]]*)\])?", target)
    assert match, target
    return {e.strip() for e in (match.group(1) or "").split(",") if e.strip()}


def test_triton_image_is_a_pinned_ngc_release_running_as_its_own_user() -> None:
    ops = instructions("Dockerfile.triton")
    image = next(args for op, args in ops if op == "ARG" and args.startswith("TRITON_IMAGE="))
    assert re.fullmatch(r"TRITON_IMAGE=nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", image), image
    assert ("USER", "1000:1000") in ops  # triton-server, the NGC image's non-root user
    assert any(op == "HEALTHCHECK" for op, _ in ops)
    assert [extras_of(t) for t in pip_install_targets("Dockerfile.triton")] == [{"models", "gpu"}]
    assert "postprocess" not in (ROOT / "Dockerfile.triton").read_text()  # that model is gone
    entry = next(args for op, args in ops if op == "COPY" and "triton-entrypoint.sh" in args)
    assert "dgate-triton-entrypoint" in entry


def test_frontend_image_is_multi_stage_non_root_and_installs_no_model_extra() -> None:
    ops = instructions("Dockerfile.frontend")
    assert sum(op == "FROM" for op, _ in ops) >= 2
    assert any(op == "COPY" and "--from=build" in args for op, args in ops)
    user = [args for op, args in ops if op == "USER"]
    assert user and not user[-1].startswith(("0", "root"))
    assert any(op == "HEALTHCHECK" for op, _ in ops)
    targets = pip_install_targets("Dockerfile.frontend")
    assert targets, "Dockerfile.frontend installs the project"
    heavy = {"models", "gpu", "quant", "eval", "tensorrt", "triton-wheel", "test"}
    for target in targets:
        assert not extras_of(target) & heavy, target
    assert "torch" not in " ".join(args for op, args in ops if op == "RUN")


def requirement_names(specs: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def applicable(specs: list[str] | None, extras: set[str]) -> list[str]:
    """The requirement strings among `specs` whose markers hold for `extras` (none: the base)."""
    kept = []
    for spec in specs or ():
        marker = Requirement(spec).marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in extras or {""}):
            kept.append(spec)
    return kept


def frontend_image_lacks() -> set[str]:
    """Import names of what only the extras install (torch, diffusers, transformers, ONNX Runtime,
    locust...): everything outside the base dependencies and what they pull in, which is all that
    Dockerfile.frontend installs. Read from pyproject.toml, so a new extra dependency is covered."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base: set[str] = set()
    todo = [Requirement(spec) for spec in project["dependencies"]]
    while todo:  # the base dependencies' closure, as installed here
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in base:
            continue
        base.add(name)
        try:
            requires = importlib.metadata.requires(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [Requirement(spec) for spec in applicable(requires, set(requirement.extras))]
    extra_only = set().union(*(requirement_names(specs) for specs in project["optional-dependencies"].values()))
    modules_of: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(canonicalize_name(dist), set()).add(module)
    lacking: set[str] = set()
    for dist in extra_only - base:
        lacking |= modules_of.get(dist, {dist.replace("-", "_")})
    lacking -= set().union(*(modules_of.get(dist, set()) for dist in base))  # shared namespaces (google)
    return {m for m in lacking if m.isidentifier() and not m.startswith("_")}


def test_what_the_frontend_image_lacks_includes_the_model_packages() -> None:
    lacking = frontend_image_lacks()
    assert {"torch", "diffusers", "transformers", "onnxruntime", "tensorrt", "peft"} <= lacking
    assert not {"fastapi", "tritonclient", "numpy", "PIL", "psycopg", "grpc"} & lacking


def in_the_frontend_image(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a Python where what the frontend image lacks (frontend_image_lacks) cannot be
    imported: a meta-path finder, first in line, refuses those names."""
    prelude = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {sorted(frontend_image_lacks())!r}

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not in the frontend image")
                return None

        sys.meta_path.insert(0, Blocker())
    """)
    epilogue = "\nassert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DGATE_")}
    return run([sys.executable, "-c", prelude + textwrap.dedent(code) + epilogue], cwd=cwd, env=env)


def test_every_frontend_module_and_the_app_load_without_torch(tmp_path: Path) -> None:
    """What Dockerfile.frontend installs (the base dependencies) is enough for every dgate.frontend
    module and for building the app."""
    result = in_the_frontend_image("""
        import importlib, pkgutil
        import dgate.frontend
        names = [m.name for m in pkgutil.walk_packages(dgate.frontend.__path__, "dgate.frontend.")]
        for name in names:
            importlib.import_module(name)
        from dgate.frontend.app import create_app
        from dgate.frontend.settings import FrontendSettings
        create_app(FrontendSettings(jobs_db="sqlite://jobs.db", assets_dir="assets"))
        print(len(names))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 20  # every module was walked, not an empty package


def test_the_images_entrypoint_dgate_frontend_starts_without_torch(tmp_path: Path) -> None:
    """`dgate frontend` (the image's ENTRYPOINT) gets through the whole command line's parser."""
    result = in_the_frontend_image("""
        from dgate.cli import build_parser
        args = build_parser().parse_args(["frontend", "--triton-url", "triton:8001"])
        assert args.func.__name__ == "cmd_frontend"
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


# --- the Triton entrypoint ---------------------------------------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """Stand-ins for `dgate`, `tritonserver` and `nvidia-smi` that record how they were called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        # `dgate export ... --out DIR`: write a model folder into DIR, like the real export
        "dgate": 'echo "$@" > "$CALLS/dgate"\nwhile [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done\n'
                 'mkdir -p "$out/sd" && echo config > "$out/sd/config.pbtxt"\n',
        "tritonserver": 'printf "%s\\n" "$@" > "$CALLS/tritonserver"\n',
        "nvidia-smi": 'printf "0\\n1\\n"\n',  # two visible GPUs
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
    return bin_dir


def entrypoint(fake_bin: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    calls = fake_bin.parent / "calls"
    calls.mkdir(exist_ok=True)
    base = {"PATH": f"{fake_bin}:/usr/bin:/bin", "CALLS": str(calls)}
    return run(["sh", str(ENTRYPOINT), *args], env=base | env)


def test_entrypoint_exports_from_a_checkpoint_then_serves(fake_bin: Path, tmp_path: Path) -> None:
    repository = tmp_path / "models" / "repository"
    result = entrypoint(fake_bin, "serve", "--log-verbose=1", DGATE_MODEL_REPOSITORY=str(repository),
                        DGATE_EXPORT_MODEL="/ckpt/a /ckpt/b", DGATE_EXPORT_ARGS="--engine torch --device gpu",
                        DGATE_CUDA_POOL_MB="16")
    assert result.returncode == 0, result.stderr
    calls = tmp_path / "calls"
    assert (calls / "dgate").read_text().split() == [
        "export", "--model", "/ckpt/a", "--model", "/ckpt/b", "--out", f"{repository}.partial",
        "--engine", "torch", "--device", "gpu"]
    assert (repository / "sd" / "config.pbtxt").is_file() and not Path(f"{repository}.partial").exists()
    args = (calls / "tritonserver").read_text().split()
    assert f"--model-repository={repository}" in args and "--strict-readiness=true" in args
    pool = 16 * 1024 * 1024
    assert f"--cuda-memory-pool-byte-size=0:{pool}" in args and f"--cuda-memory-pool-byte-size=1:{pool}" in args
    assert args[-1] == "--log-verbose=1"  # the caller's flags come last, so they win


def test_entrypoint_serves_an_existing_or_remote_repository_without_exporting(fake_bin: Path,
                                                                               tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    repository.mkdir()
    for target in (str(repository), "s3://bucket/repository"):
        result = entrypoint(fake_bin, DGATE_MODEL_REPOSITORY=target, DGATE_EXPORT_MODEL="/ckpt/a")
        assert result.returncode == 0, result.stderr
        assert f"--model-repository={target}" in (tmp_path / "calls" / "tritonserver").read_text().split()
    assert not (tmp_path / "calls" / "dgate").exists()
    assert entrypoint(fake_bin, "wait", DGATE_MODEL_REPOSITORY=str(repository)).returncode == 0
    assert entrypoint(fake_bin, "export", DGATE_MODEL_REPOSITORY="s3://bucket/r").returncode == 1
    assert entrypoint(fake_bin, "bogus").returncode == 2


# --- Kubernetes manifests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each overlay rendered once by `kubectl kustomize` (kustomize inside kubectl)."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for overlay in OVERLAYS:
        result = run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)])
        assert result.returncode == 0, f"{overlay}: {result.stderr}"
        files[overlay] = out / f"{overlay}.yaml"
        files[overlay].write_text(result.stdout)
    return files


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in spec["containers"] if c["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_against_the_kubernetes_schemas(overlay: str, rendered: dict[str, Path]) -> None:
    result = run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", KUBERNETES_VERSION,
                  str(rendered[overlay])])
    assert result.returncode == 0, result.stdout + result.stderr
    # An unknown kind (a CRD) only warns: every object here must have been checked against a schema.
    assert "WARN" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(objects(rendered[overlay]))


def test_manifests_pass_yamllint() -> None:
    result = run([tool("yamllint"), "--strict", "-c", str(K8S / ".yamllint"), str(K8S)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_secret_is_written_anywhere(rendered: dict[str, Path]) -> None:
    """Secrets are referenced by name and created by the operator; none is rendered or generated."""
    for overlay, path in rendered.items():
        assert not [d for d in objects(path) if d["kind"] == "Secret"], overlay
    for source in K8S.rglob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(source.read_text()) if d]
        assert not [d for d in docs if d.get("kind") == "Secret"], source
        assert not [d for d in docs if "secretGenerator" in d], source


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_has_probes_resources_and_time_to_drain(overlay: str, rendered: dict[str, Path]) -> None:
    docs = objects(rendered[overlay])
    spec = find(docs, "Deployment", "dgate-triton")["spec"]["template"]["spec"]
    triton = container(spec, "triton")
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 900  # large pipelines load for minutes
    assert triton["resources"]["requests"]["memory"] and triton["resources"]["limits"]["memory"]
    gpus = triton["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay in GPU_OVERLAYS), gpus
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("dgate-triton"))
    drain = int(config["data"]["DGATE_EXIT_TIMEOUT_S"]) + int(triton["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > drain
    assert any(m["mountPath"] == "/dev/shm" for m in triton["volumeMounts"])  # the Python backend's shm
    if overlay in GPU_OVERLAYS:
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]) and spec["nodeSelector"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_restricted(overlay: str, rendered: dict[str, Path]) -> None:
    docs = objects(rendered[overlay])
    namespace = find(docs, "Namespace", "dgate")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    specs = list(pod_specs(docs))
    assert specs
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec["containers"] + spec.get("initContainers", []):
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert context["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert c["resources"]["requests"], (name, c["name"])
        main = spec["containers"][0]
        assert any(m["mountPath"] == "/tmp" for m in main.get("volumeMounts", [])), name  # writable scratch


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_frontend_replicas_share_postgres_and_an_assets_volume(overlay: str, rendered: dict[str, Path]) -> None:
    docs = objects(rendered[overlay])
    deployment = find(docs, "Deployment", "dgate-frontend")
    spec = deployment["spec"]["template"]["spec"]
    frontend = container(spec, "frontend")
    env = {e["name"]: e for e in frontend["env"]}
    assert env["DGATE_JOBS_DB"]["valueFrom"]["secretKeyRef"] == {"name": "dgate-database", "key": "url"}
    assert frontend["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert frontend["livenessProbe"]["httpGet"]["path"] == "/health"
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("dgate-frontend"))
    assert config["data"]["DGATE_TRITON_URL"] == "dgate-triton:8001"
    assets = next(v for v in spec["volumes"] if v["name"] == "assets")["persistentVolumeClaim"]["claimName"]
    assert find(docs, "PersistentVolumeClaim", assets)["spec"]["accessModes"] == ["ReadWriteMany"]
    mount = next(m for m in frontend["volumeMounts"] if m["name"] == "assets")["mountPath"]
    assert mount == config["data"]["DGATE_ASSETS_DIR"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    has_postgres = any(d["kind"] == "StatefulSet" and d["metadata"]["name"] == "dgate-postgres" for d in docs)
    assert has_postgres == (overlay == "cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_reference_resolves(overlay: str, rendered: dict[str, Path]) -> None:
    """ConfigMaps (renamed with their hash), claims and service accounts that pods name exist."""
    docs = objects(rendered[overlay])
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for name, spec in pod_specs(docs):
        for c in spec["containers"] + spec.get("initContainers", []):
            for source in c.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names, (name, source)
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names, name
        if "serviceAccountName" in spec:
            assert ("ServiceAccount", spec["serviceAccountName"]) in names, name
    for hpa in (d for d in docs if d["kind"] == "HorizontalPodAutoscaler"):
        assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in names


def test_triton_autoscales_on_metrics_the_adapter_rules_serve(rendered: dict[str, Path]) -> None:
    rules = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    served = {rule["name"]["as"] for rule in rules}
    assert all("nv_inference" in rule["seriesQuery"] for rule in rules)
    for overlay in OVERLAYS:
        docs = objects(rendered[overlay])
        metrics = find(docs, "HorizontalPodAutoscaler", "dgate-triton")["spec"]["metrics"]
        wanted = {m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"}
        assert wanted and wanted <= served, (overlay, wanted, served)
        frontend = find(docs, "HorizontalPodAutoscaler", "dgate-frontend")["spec"]["metrics"]
        assert frontend[0]["resource"]["name"] == "cpu"
        for component in ("triton", "frontend"):
            find(docs, "PodDisruptionBudget", f"dgate-{component}")


def ports_from(policy: dict[str, Any]) -> list[tuple[set[int], list[dict[str, Any]]]]:
    return [({p["port"] for p in rule["ports"]}, rule["from"]) for rule in policy["spec"]["ingress"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_frontend_reaches_triton_and_only_prometheus_its_metrics(overlay: str,
                                                                          rendered: dict[str, Path]) -> None:
    docs = objects(rendered[overlay])
    deny = find(docs, "NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and "ingress" not in deny
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    frontend_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "dgate",
                                                     "app.kubernetes.io/component": "frontend"}}}
    triton = dict((frozenset(ports), peers) for ports, peers in ports_from(find(docs, "NetworkPolicy", "dgate-triton")))
    assert triton == {frozenset({8000, 8001}): [frontend_pods], frozenset({8002}): [prometheus]}
    frontend = ports_from(find(docs, "NetworkPolicy", "dgate-frontend"))
    assert [ports for ports, _ in frontend] == [{9000}] and prometheus in frontend[0][1]
    for name in ("dgate-triton", "dgate-frontend"):
        annotations = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
    if overlay == "cpu":
        postgres = ports_from(find(docs, "NetworkPolicy", "dgate-postgres"))
        assert postgres == [({5432}, [frontend_pods])]


def test_eks_reads_the_repository_from_s3_with_an_irsa_role(rendered: dict[str, Path]) -> None:
    docs = objects(rendered["eks"])
    account = find(docs, "ServiceAccount", "dgate-triton")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("dgate-triton"))
    assert config["data"]["DGATE_MODEL_REPOSITORY"].startswith("s3://")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Job", "dgate-export") not in names and ("PersistentVolumeClaim", "dgate-model-repository") not in names
    spec = find(docs, "Deployment", "dgate-triton")["spec"]["template"]["spec"]
    assert not spec.get("initContainers") and "eks.amazonaws.com/nodegroup" in spec["nodeSelector"]
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert tmp["ephemeral"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "dgate-gp3"
    classes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "StorageClass"}
    assert classes["dgate-gp3"]["parameters"]["type"] == "gp3"
    assert classes["dgate-efs"]["provisioner"] == "efs.csi.aws.com"
    assert find(docs, "PersistentVolumeClaim", "dgate-assets")["spec"]["storageClassName"] == "dgate-efs"


@pytest.mark.parametrize("overlay", ("gpu", "cpu"))
def test_triton_waits_for_the_repository_the_export_job_writes(overlay: str, rendered: dict[str, Path]) -> None:
    docs = objects(rendered[overlay])
    job = find(docs, "Job", "dgate-export")["spec"]["template"]["spec"]
    triton = find(docs, "Deployment", "dgate-triton")["spec"]["template"]["spec"]
    assert container(job, "export")["args"] == ["export"]
    assert [c["args"] for c in triton["initContainers"]] == [["wait"]]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in job["volumes"] if "persistentVolumeClaim" in v}
    served = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in triton["volumes"] if "persistentVolumeClaim" in v}
    assert claim["repository"] == served["repository"] == "dgate-model-repository"
    gpus = container(job, "export")["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert (gpus == "1") == (overlay == "gpu")


def test_servicemonitor_component_renders_onto_an_overlay(tmp_path: Path) -> None:
    """The optional component (kept out of the overlays: its CRD is not in the Kubernetes schemas)."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        # kustomize takes only relative paths to other kustomizations
        "resources": [os.path.relpath(K8S / "overlays" / "gpu", tmp_path)],
        "components": [os.path.relpath(K8S / "components" / "servicemonitor", tmp_path)]}))
    result = run([tool("kubectl"), "kustomize", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"dgate-triton", "dgate-frontend"}
    for name, monitor in monitors.items():
        assert monitor["metadata"]["namespace"] == "dgate"
        service = find(docs, "Service", name)
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
