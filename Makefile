# Two commands on a fresh machine: `make demo` (install + extract + train + evaluate) and `make test`.
PYTHON ?= python3
SHARED ?= ../shared
DEMO := data/demo

.PHONY: install install-test demo test bench gpu-wheels gpu-photos gpu-ready

install:
	$(PYTHON) -m pip install -q -e .

# torch comes from PyTorch's CPU index (PyPI's wheel bundles CUDA, gigabytes), tried once, quietly; if that
# index cannot be reached, torch's tests skip with their reason and everything else still runs.
install-test:
	$(PYTHON) -m pip install -q -e '.[test]'
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q --retries 0 --timeout 5 torch \
		--index-url https://download.pytorch.org/whl/cpu >/dev/null 2>&1 \
		|| echo "torch (CPU) could not be installed from PyTorch's index: its tests will skip"

demo: install
	$(PYTHON) scripts/demo.py --shared $(SHARED) --out $(DEMO)

# Two pytest-xdist workers, one test file each at a time: the suite's processes use about one core on
# average (one process: 28 min wall for 29 min of CPU on 2 cores), two workers keep both busy.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

test: install-test
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: install
	$(PYTHON) scripts/bench_extract.py
	$(PYTHON) scripts/bench_train.py

# The GPU check (docs/gpu.md): what a lent GPU machine lacks, as wheels for its Python (3.12, manylinux
# x86-64) in .whl/ (keras, keras-hub, namex, braceexpand are pure; river, optree, simplejpeg compiled for
# cp312: GPU_PY=3.11 GPU_WHEELS=.whl-cpu fetches them for the dry run here), and a few hundred real photos
# in .gpu_photos/ (both ignored by git; both travel with `carry`). The machine has PyTorch, JAX, numpy,
# h5py, Pillow, scipy, pandas, narwhals, rich, absl-py, ml-dtypes, click, tqdm, matplotlib, scikit-learn,
# opencv, but no Keras and no network. Ray's wheel
# (79 MB) alone is over the 64 MiB a call may carry: the Ray path cannot be measured there.
GPU_PY ?= 3.12
GPU_WHEELS ?= .whl
GPU_PHOTOS ?= .gpu_photos
GPU_PHOTO_COUNT ?= 300
GPU_PACKAGES ?= keras==3.15.1 namex==0.1.0 optree==0.20.0 river==0.26.1 braceexpand==0.1.7 simplejpeg==1.9.0 keras-hub==0.32.0
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64

gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
		$(GPU_PLATFORMS) -d $(GPU_WHEELS) $(GPU_PACKAGES)
	$(PYTHON) scripts/gpu_check.py --carry-size $(GPU_WHEELS) $(GPU_PHOTOS)

gpu-photos:
	$(PYTHON) scripts/gpu_check.py --copy-photos $(SHARED)/data/dogs-vs-cats/train $(GPU_PHOTOS) $(GPU_PHOTO_COUNT)

gpu-ready: gpu-wheels gpu-photos
	$(PYTHON) scripts/gpu_check.py --carry-size $(GPU_WHEELS) $(GPU_PHOTOS)
