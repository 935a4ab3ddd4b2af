"""The install itself: one `dgate` namespace, a torch-free frontend, lint-clean Dockerfiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_folders_install_under_one_namespace(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u, dgate.core, dgate.export, dgate.frontend, dgate.model_repository\n"
        "assert all(u.find_spec(n) is None for n in ('frontend', 'export', 'model_repository', 'eval')), 'leak'\n"
        "import dgate.export.pipeline_export, dgate.frontend.app\n"
        "print(dgate.frontend.__file__)"
    )
    result = _python(code, cwd=tmp_path)  # outside the checkout, so only the installed mapping can resolve
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == ROOT / "frontend"


def test_frontend_does_not_import_torch(tmp_path: Path) -> None:
    result = _python("import sys, dgate.frontend.app, dgate.cli\nassert 'torch' not in sys.modules", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_cli_lists_every_subcommand() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "dgate"), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for command in ("tiny", "export", "triton", "serve", "frontend", "bench", "calibrate", "bench-quant", "eval",
                    "loadtest", "keys"):
        assert command in result.stdout


def test_torchvision_imports_beside_the_cpu_torch(tmp_path: Path) -> None:
    """PyPI's CUDA-linked torchvision beside the CPU torch (dgate/torchvision_ops.py): torchvision,
    transformers' image processors and diffusers' pipelines import, in plain `python` (the venv's
    .pth) and after `import dgate`."""
    code = ("import torchvision, transformers.models.clip\n"
            "from diffusers import StableDiffusionPipeline\n"
            "import open_clip, lpips\n"
            "import torchvision.transforms.functional as F, torch\n"
            "assert F.resize(torch.zeros(1, 3, 8, 8), [4, 4]).shape == (1, 3, 4, 4)")
    for prefix in ("", "import dgate\n"):
        result = _python(prefix + code, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
