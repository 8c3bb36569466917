# dpseg: every target installs what it needs first; `make install` runs once (it is redone only
# when pyproject.toml or constraints.txt change).
# torch/torchvision are pinned and installed before anything else: an unpinned torch pulls the
# newest CUDA build (several GB); these versions come from the local mirror in about a minute.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1
# Tests and the demo run on 2 CPU cores; more threads than cores only slows them down.
export OMP_NUM_THREADS ?= 2

.PHONY: help install lint format test test-all coverage demo app claims presets bank bench-gpu rehearse lock clean
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install dpseg, pinned, with its dev tools

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '2.14.1', torch.__version__"
	touch $(STAMP)

lint: $(STAMP)  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# make test runs the suite in TEST_WORKERS processes (pytest-xdist), each test file in one of them
# (its module fixtures built once), one thread each: on 2 cores, two files at a time.
TEST_WORKERS ?= 2

PYTEST = OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test: lint  ## lint, then the test suite (offline, CPU, tiny presets) without the long end-to-end runs: ~10 min on 2 cores
	$(PYTEST) -m "not e2e"

coverage: $(STAMP)  ## what make test covers, and the lines only the e2e tests reach (about 17 min)
	$(PY) benchmarks/coverage_split.py --out coverage_out

test-all: lint  ## lint, then every test, the long end-to-end runs (-m e2e: the learning guard) included (CI runs this)
	$(PYTEST)

demo: $(STAMP)  ## the whole path offline in the toy world: data, bank, fit, test x2, predict
	$(PY) demo.py --out demo_out

app: $(STAMP)  ## the web app on http://127.0.0.1:7860 with the toy model of `make demo` (DPSeg and VIP)
	@test -f demo_out/model/config.json || { echo "make app serves demo_out/model: run make demo first"; exit 2; }
	$(PY) cli.py app --model demo_out/model --vip-config configs/vip_toy.yaml \
		--vocab 'red disc; blue square; green triangle; yellow ring; background'

claims: $(STAMP)  ## the papers' claims decided in the toy world: 5 paired seeds, verdicts, about 16 h, resumable (ledger) (docs/toy_world.md)
	$(PY) benchmarks/claims.py --out claims_out

# make bank VOCAB=ade847 [PRESET=paper|fast|vit|tiny] [TEMPLATES=imagenet80] [IMAGES=1] [OUT=...]
VOCAB     ?=
PRESET    ?= paper
TEMPLATES ?= imagenet80
IMAGES    ?= 1
OUT       ?= banks/$(notdir $(basename $(VOCAB))).zarr
BANK_ARGS ?=

bank: $(STAMP)  ## build/resume a prompt bank: make bank VOCAB=ade847 [PRESET=tiny] [OUT=...]
	@test -n "$(VOCAB)" || { echo "usage: make bank VOCAB=<name or file> [PRESET=paper|fast|vit|tiny] [TEMPLATES=imagenet80] [IMAGES=1] [OUT=banks/<vocab>.zarr]"; exit 2; }
	$(PY) cli.py bank build --vocab '$(VOCAB)' --preset $(PRESET) --templates '$(TEMPLATES)' \
		--images-per-prompt $(IMAGES) --out '$(OUT)' $(BANK_ARGS)

bench-gpu: $(STAMP)  ## GPU speed and memory (bank, inference, a training step), <= 8 min
	$(PY) benchmarks/bench_gpu.py

# The rehearsal's hub cache: snapshots of every hub preset, random weights at the real sizes
# (16 GiB, about 4 min to write once), read offline by the presets' own loaders.
REHEARSAL ?= $(HOME)/.cache/dpseg/rehearsal

rehearse: $(STAMP)  ## every real loading path on the real architectures, offline (docs/results.md)
	test -f '$(REHEARSAL)/.complete' || { $(PY) -m rehearsal.snapshots --home '$(REHEARSAL)' \
		&& touch '$(REHEARSAL)/.complete'; }
	$(PY) -m rehearsal.run --home '$(REHEARSAL)' --json '$(REHEARSAL)/rehearsal.json'

presets: $(STAMP)  ## list model presets and what each needs
	$(PY) cli.py presets

lock: $(STAMP)  ## rewrite constraints.txt from the current .venv
	{ head -2 constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^dpseg'; } > constraints.new
	mv constraints.new constraints.txt

clean:  ## remove the venv and generated outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out claims_out coverage_out
