# sam2-service: `make run` sets up and starts the daemon; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
MODEL  ?= tiny
SOCKET ?= /tmp/wcc-sam2.sock
DUMMY  ?=
BENCH_DEVICE ?= cpu
CHECKPOINT := checkpoints/sam2.1_hiera_$(MODEL).pt
STAMP  := $(VENV)/.installed
# pip index for the torch step alone, e.g. https://download.pytorch.org/whl/cpu for the CPU-only
# build; empty: PyPI, whose Linux torch wheels pull in the CUDA libraries (about 2.6 GB).
TORCH_INDEX ?=

.PHONY: install run test test-unit lint fuzz clean bench

# torch first, then sam2 without build isolation (its sdist build imports torch; isolation
# would fetch a second multi-GB torch), then this package with the daemon's extra and its test tools;
# last, torch, torchvision (its compiled ops) and sam2 must import and go together (the stamp is
# written only then, so a broken pair is retried by the next make).
$(STAMP): pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check $(if $(TORCH_INDEX),--index-url '$(TORCH_INDEX)' )'torch>=2.5.1' 'torchvision>=0.20.1'
	SAM2_BUILD_CUDA=0 $(PIP) install --disable-pip-version-check --no-build-isolation 'sam2==1.1.0'
	$(PIP) install --disable-pip-version-check --no-build-isolation -e '.[daemon,web,napari,batch,video,test]'
	$(PY) -c 'from sam2_service.daemon.ops.doctor import install_check; raise SystemExit(install_check())'
	touch $(STAMP)

install: $(STAMP)

# What `make run` suggests when the checkpoint host is unreachable: the same command with
# DUMMY=1, repeating MODEL and SOCKET where they were given (command line or environment).
DUMMY_HINT = make run DUMMY=1$(if $(filter-out file,$(origin MODEL)), MODEL=$(MODEL))$(if \
  $(filter-out file,$(origin SOCKET)), SOCKET=$(SOCKET))

# the models `serve --model` knows (sam2_service/daemon/config.py MODELS); `all` is the download
# script's alone. Checked before the set-up, so a typo does not wait for the install first.
MODELS := tiny small base_plus large
ifneq ($(filter run,$(MAKECMDGOALS)),)
ifeq ($(filter $(MODEL),$(MODELS)),)
$(error unknown MODEL '$(MODEL)': choose tiny, small, base_plus or large)
endif
endif

run: install
ifeq ($(DUMMY),1)
	$(VENV)/bin/sam2-service serve --model $(MODEL) --socket $(SOCKET) --dummy-weights
else
	@test -f $(CHECKPOINT) || SAM2_DOWNLOAD_HINT="; start with random weights instead: $(DUMMY_HINT)" \
	  ./download_checkpoint.sh $(MODEL)
	$(VENV)/bin/sam2-service serve --model $(MODEL) --socket $(SOCKET) --checkpoint $(CHECKPOINT)
endif

# the browser page and its gateway on top of a running daemon (`make run`): http://127.0.0.1:8000/app
# (PORT=8001 for another port; empty: the gateway's own default, --port / SAM2_WEB_PORT)
PORT ?=
.PHONY: web napari
web: install
	$(VENV)/bin/sam2-service web --socket $(SOCKET)$(if $(PORT), --port $(PORT))

# napari from the venv, with the plugin (Plugins > SAM2), on top of a running daemon (`make run`)
napari: install
	SAM2_SERVICE_SOCKET=$(SOCKET) $(VENV)/bin/napari

# --durations: the slowest tests at the end of the log, where CI's time goes
test: install lint
	$(PY) -m pytest --durations=25

# ruff with the rules in pyproject.toml ([tool.ruff]); part of `make test`
lint: install
	$(VENV)/bin/ruff check sam2_service tests fuzz benchmarks

test-unit: install
	$(PY) -m pytest tests/unit

# Daemon vs in-process request times; prints a table and updates docs/benchmarks.md.
bench: install
	$(PY) benchmarks/bench.py --device $(BENCH_DEVICE)

# hypothesis fuzzing of the whole request path without I/O (FUZZ_SECONDS, default 10 min)
FUZZ_SECONDS ?= 600
fuzz: install
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) fuzz/fuzz_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
