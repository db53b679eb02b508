# Two commands on a fresh machine: `make demo` (install + extract + train + evaluate) and `make test`.
PYTHON ?= python3
SHARED ?= ../shared
DEMO := data/demo

.PHONY: install install-test demo test bench

install:
	$(PYTHON) -m pip install -q -e .

install-test:
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	$(PYTHON) scripts/demo.py --shared $(SHARED) --out $(DEMO)

test: install-test
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) scripts/bench_extract.py
	$(PYTHON) scripts/bench_train.py
