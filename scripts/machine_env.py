"""A Python environment shaped like the lent GPU machine's, for the GPU check's dry run on this machine.

    python scripts/machine_env.py /tmp/machine-env      # then /tmp/machine-env/bin/python scripts/gpu_check.py ...

The lent machine (the ``device`` tool's ``nvidia-h200``) has PyTorch, JAX,
numpy, h5py, Pillow, OpenCV, scikit-learn... but no TensorFlow, no Keras, no
River, no simplejpeg, no keras-hub: those travel as wheels. This builds a
virtual environment without this machine's site-packages, then links into it
(symbolic links, seconds, no download) the distributions installed here whose
names are in the machine's package list (``MACHINE_PACKAGES``, read off the
device tool's KINDS.md, 2026-11-17). Everything else, TensorFlow and Keras
first, cannot be imported from it, so a dry run shows what the carried wheels
must supply and that no code path needs TensorFlow on the JAX and torch backends.

What stays different: the interpreter (this machine's Python, e.g. 3.11; the
machine's is 3.12), the versions of the linked packages, and the GPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

# The lent machine's Python packages (the device tool's KINDS.md, "Python packages already there", 2026-11-17).
MACHINE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# Never linked, whatever the list says: what the machine lacks and the wheels (or nothing) must supply.
ABSENT = frozenset({"tensorflow", "tensorflow-cpu", "tensorflow-text", "keras", "keras-hub", "tf-keras", "river",
                    "simplejpeg", "optree", "namex", "braceexpand", "ray", "incremental-pipeline"})


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def top_levels(dist: md.Distribution) -> set[str]:
    """The names a distribution puts in site-packages (packages, modules, its .dist-info, .pth files)."""
    names = set()
    for f in dist.files or []:
        parts = Path(str(f)).parts
        if parts and not parts[0].startswith("..") and parts[0] != "__pycache__":
            names.add(parts[0])
    return names


def build(dest: Path) -> dict[str, list[str]]:
    """A venv at ``dest`` holding links to this environment's machine packages; returns linked and left-out names."""
    if dest.exists():
        raise SystemExit(f"{dest} exists: give a new folder")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    site = Path(subprocess.run([str(dest / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    linked, left = [], []
    for dist in md.distributions():
        name = normalise(dist.metadata["Name"] or "")
        if name not in MACHINE_PACKAGES or name in ABSENT:
            left.append(name)
            continue
        root = Path(str(dist.locate_file("")))
        for top in top_levels(dist):
            src = root / top
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
        linked.append(name)
    return {"linked": sorted(set(linked)), "left_out": sorted(set(left))}


def check(dest: Path) -> list[str]:
    """Problems: a package the machine lacks is importable, or one it has is not."""
    code = ("import importlib.util as u, json\n"
            "print(json.dumps({n: u.find_spec(n) is not None for n in "
            "('tensorflow', 'keras', 'keras_hub', 'river', 'simplejpeg', 'numpy', 'jax', 'torch', 'h5py', 'PIL', "
            "'cv2', 'sklearn', 'pip')}))")
    found = json.loads(subprocess.run([str(dest / "bin" / "python"), "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    problems = [f"{n} importable" for n in ("tensorflow", "keras", "keras_hub", "river", "simplejpeg") if found[n]]
    problems += [f"{n} missing" for n in ("numpy", "h5py", "PIL", "pip") if not found[n]]
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", type=Path, help="a new folder for the environment")
    args = ap.parse_args()
    got = build(args.dest)
    problems = check(args.dest)
    print(f"{args.dest}: {len(got['linked'])} of the machine's packages linked from this environment; "
          f"not linked: {', '.join(n for n in got['left_out'] if n in ABSENT or n.startswith('tensorflow'))}")
    if problems:
        print("not like the machine: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
