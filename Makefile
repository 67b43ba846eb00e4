# Every target creates .venv on first use. torch is pinned to the locally available CPU
# build first, so the project's own range is already satisfied and pip fetches nothing larger.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test bench lint clean js-interop

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The main job: a local multi-process devnet where an honest claim is paid and a cheat slashed.
demo: $(STAMP)
	.venv/bin/pol devnet --verifiers 4 --provers 2 --cheaters 1

test: $(STAMP) js-interop
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest -q tests/bench --benchmark-enable --benchmark-only

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

