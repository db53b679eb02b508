# Two commands on a fresh machine: `make demo` (install + extract + train + evaluate) and `make test`.
PYTHON ?= python3
SHARED ?= ../shared
DEMO := data/demo

.PHONY: install install-test demo test bench

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

test: install-test
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) scripts/bench_extract.py
	$(PYTHON) scripts/bench_train.py
