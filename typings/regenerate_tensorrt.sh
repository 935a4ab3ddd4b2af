#!/usr/bin/env bash
# Regenerates typings/tensorrt/ from the TensorRT Python bindings (see typings/README.md).
# Needs network access to PyPI, a C compiler and python3.11 (the bindings wheel is per-CPython).
# Usage: bash typings/regenerate_tensorrt.sh [VERSION]   (run from anywhere; default 11.4.0.106)
set -euo pipefail
version="${1:-11.4.0.106}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3.11 -m venv "$work/venv"
"$work/venv/bin/pip" install -q pybind11-stubgen==3.0.0 typing_extensions "numpy<2"
# Only the bindings: PyPI serves tensorrt-cu12-libs (libnvinfer, GBs) as a stub sdist that downloads
# from NVIDIA's own index. The bindings import as the `tensorrt` package of the tarball's wheel.
"$work/venv/bin/pip" install -q --no-deps "tensorrt-cu12-bindings==$version"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
cp -r "$site/tensorrt_bindings" "$site/tensorrt"
# The extension module needs 10 symbols from libnvinfer/libnvonnxparser/libnvinfer_plugin at load
# time only; placeholder libraries let it import for introspection (nothing is ever called).
mkdir "$work/lib"
cat > "$work/lib/nvinfer.c" <<'EOF'
void* createInferBuilder_INTERNAL(void* a, int b) { return 0; }
void* createInferRefitter_INTERNAL(void* a, void* b, int c) { return 0; }
void* createInferRuntime_INTERNAL(void* a, int b) { return 0; }
void* getBuilderPluginRegistry(int a) { return 0; }
void* getPluginRegistry(void) { return 0; }
EOF
cat > "$work/lib/nvonnxparser.c" <<'EOF'
void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c) { return 0; }
void* createNvOnnxParser_INTERNAL(void* a, void* b, int c) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
EOF
echo 'int initLibNvInferPlugins(void* a, const char* b) { return 0; }' > "$work/lib/nvinfer_plugin.c"
major="${version%%.*}"
for lib in nvinfer nvonnxparser nvinfer_plugin; do
  cc -shared -fPIC -Wl,-soname,"lib$lib.so.$major" -o "$work/lib/lib$lib.so.$major" "$work/lib/$lib.c"
done
cd "$work"
LD_LIBRARY_PATH="$work/lib" "$work/venv/bin/pybind11-stubgen" tensorrt -o "$work/out" \
  --print-invalid-expressions-as-is \
  --enum-class-locations 'DataType:tensorrt.tensorrt' \
  --enum-class-locations 'PluginFieldType:tensorrt.tensorrt' \
  --enum-class-locations 'Severity:tensorrt.tensorrt.ILogger' \
  --enum-class-locations 'EngineStat:tensorrt.tensorrt' \
  --enum-class-locations 'ExecutionContextAllocationStrategy:tensorrt.tensorrt'
# The edits mypy needs on top of pybind11-stubgen's output.
"$work/venv/bin/python" - "$work/out/tensorrt/tensorrt.pyi" <<'EOF'
import re
import sys
from pathlib import Path

# C++ names that pybind11 printed into signatures, and the Python classes they are bound as.
CPP_NAMES = {
    "nvinfer1::v_1_0::IErrorRecorder": "IErrorRecorder",
    "nvinfer1::v_1_0::IGpuAllocator": "IGpuAllocator",
    "nvinfer1::IBuilder": "Builder",
    "nvonnxparser::IParserError": "ParserError",
    "detail::accessor<detail::accessor_policies::str_attr>": "IPluginRegistry",
}
# Stub-internal inconsistencies that do not change how a call is checked: mixin methods typed
# `self: IPluginV3`, pybind11 overloads mypy deems overlapping, attributes that shadow a base's.
HEADER = '# mypy: disable-error-code="misc,override,overload-cannot-match,assignment"\n'

path = Path(sys.argv[1])
text = path.read_text()
for cpp, py in CPP_NAMES.items():
    text = text.replace(cpp, py)
text = re.sub(r"\b(?:nvinfer1|nvonnxparser)::(\w+)", r"\1", text)
# `in` is a keyword; such parameters can only be passed positionally anyway.
text = re.sub(r"(def \w+\(self(?:: \w+)?, )in: ", r"\1in_: ", text)
# pybind11 allows a parameter without a default after defaulted ones; Python does not.
text = text.replace(
    "power: Weights = None, channel_axis: typing.SupportsInt)",
    "power: Weights = None, channel_axis: typing.SupportsInt = ...)",
)
# A static read-only property (pybind11's def_property_readonly_static).
text = text.replace("def MAX_DESC_LENGTH() -> int:", "def MAX_DESC_LENGTH(self) -> int:")
# IHostMemory implements the buffer protocol (its docstring says so; bytes(plan) works), which
# pybind11 does not expose to introspection before Python 3.12.
text = re.sub(
    r'(class IHostMemory:\n    """.*?"""\n)',
    r"\1    def __buffer__(self, flags: int, /) -> memoryview:\n        ...\n",
    text,
    count=1,
    flags=re.S,
)
out = []
in_doc = False
for line in text.split("\n"):
    if not in_doc and not line.startswith("__all__"):
        # The module defines `bool = DataType.BOOL`, which shadows the builtin in annotations.
        if not line.startswith("bool: "):
            line = re.sub(r"(?<![\w.'])bool\b", "builtins.bool", line)
        # A `None` default means the binding accepts None.
        line = re.sub(r": (?!typing.ClassVar)([\w.]+(?:\[[\w., \[\]]*\])?) = None\b", r": \1 | None = None", line)
    if not in_doc and line.lstrip().startswith("def "):
        # Implicit conversions (py::implicitly_convertible) that signatures do not show. Dims' docstring:
        # "the TensorRT API can implicitly convert Python iterables to Dims"; a numpy array passes
        # wherever Weights is taken (Weights(a: numpy.ndarray); checked: Refitter.set_named_weights).
        line = re.sub(r"(\w: )Dims(?=[,)]| =| \|)", r"\1Dims | collections.abc.Sequence[typing.SupportsInt]", line)
        line = re.sub(r"(\w: )Weights(?=[,)]| =| \|)", r"\1Weights | numpy.ndarray", line)
    if line.count('"""') % 2:
        in_doc = not in_doc
    out.append(line)
text = "\n".join(out)
text = text.replace("from __future__ import annotations\n", HEADER + "from __future__ import annotations\nimport builtins\n", 1)
path.write_text(text)
EOF
rm -rf "$here/tensorrt"
cp -r "$work/out/tensorrt" "$here/tensorrt"
echo "wrote $here/tensorrt"
