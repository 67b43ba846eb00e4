# Every target creates .venv on first use. torch is pinned to the locally available CPU
# build first, so the project's own range is already satisfied and pip fetches nothing larger.
# triton 3.9.0 (the 'gpu' extra, ~1 GB installed) is pinned the same way, so the Triton interpreter tests run here too.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test bench lint clean anvil soak js-interop browser

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0 triton==3.9.0
	$(PY) -m pip install -q -e '.[dev,gpu]'
	$(MAKE) anvil
	$(MAKE) browser
	touch $(STAMP)

# The local EVM chain (settlement contract tests, devnet): anvil's npm package, pinned by the lockfile.
ANVIL_DIR := tools/anvil
anvil: $(ANVIL_DIR)/node_modules/.installed

$(ANVIL_DIR)/node_modules/.installed: $(ANVIL_DIR)/package.json $(ANVIL_DIR)/package-lock.json
	cd $(ANVIL_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# Headless Chromium for the dashboard test (Debian packages; the test skips, saying why, without them).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; } || \
	  echo "chromium not installed: tests/integration/test_dashboard.py will skip its browser check"

# The main job: a local multi-process devnet where an honest claim is paid and a cheat slashed.
demo: $(STAMP) anvil
	.venv/bin/pol devnet --verifiers 4 --provers 2 --cheaters 1

test: $(STAMP) js-interop
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q tests/bench --benchmark-enable --benchmark-only

# Long randomized runs: model-vs-contract differential sequences (tests/chain).
soak: $(STAMP)
	POL_CHAIN_EXAMPLES=200 POL_CHAIN_STEPS=16 $(PY) -m pytest -q tests/chain/test_differential.py

.PHONY: gpucheck
# The CPU = GPU conformance table (docs/gpu.md): compiled Triton kernels on a GPU machine, the interpreter elsewhere.
gpucheck: $(STAMP)
	$(PY) -m prover.gpucheck

.PHONY: vectors
# Regenerate tests/vectors/*.json from the code (SPEC.md Appendix A); the tests check them.
vectors: $(STAMP)
	$(PY) tests/vectors/generate.py

lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/mypy protocol gpu_ops

clean:
	rm -rf .venv build *.egg-info

# A standard js-libp2p 2.x peer for tests/interop (versions pinned by the committed lockfile; Node >= 20).
# Without npm the interop test is skipped with its reason, everything else still runs.
JS_DIR := .tools/js
js-interop: $(JS_DIR)/node_modules/.installed

$(JS_DIR)/node_modules/.installed: tests/interop/js/package.json tests/interop/js/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		mkdir -p $(JS_DIR) && cp tests/interop/js/package.json tests/interop/js/package-lock.json $(JS_DIR)/ && \
		cd $(JS_DIR) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else echo "npm not found: tests/interop (js-libp2p) will be skipped"; fi

