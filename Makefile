VENV ?= .venv
PY := $(VENV)/bin/python
export RECSPARSE_DATA ?= $(abspath ../shared/data)

.PHONY: install install-gpu test test-all verify
install:          ## CPU install (default)
	bash scripts/install.sh
install-gpu:      ## CUDA install: fbgemm-gpu + faiss-gpu
	bash scripts/install.sh --gpu
test:             ## fast tier (what CI runs)
	$(PY) -m pytest -m "not slow" -q
test-all:         ## everything, slow tests included
	$(PY) -m pytest -q
verify:
	$(VENV)/bin/recsparse data verify
