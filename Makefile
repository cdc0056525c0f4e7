PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
TFJS_REFERENCE := tests/tfjs_reference

.PHONY: install tfjs-reference test bench demo clean

# torch/torchvision are pinned to the builds the build machines carry (facexlib needs a working torchvision).
install: tfjs-reference
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23"
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	-@if command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "chromium not installed: the HTML report browser test will skip"; fi

# TensorFlow.js (pure JS, pinned by its package-lock.json) is the reference the TF.js graph reader is tested
# against. Without npm the tests that need it skip; in CI (CI set) they would fail, so the install fails here first.
tfjs-reference:
	@if command -v npm >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(TFJS_REFERENCE)/node_modules/.package-lock.json; \
	elif [ -n "$$CI" ]; then \
		echo "npm not found: CI needs Node.js >= 18 and npm for the TF.js reference (make tfjs-reference)" >&2; exit 1; \
	else echo "npm not found: the TF.js reference tests will skip (install Node.js >= 18 and npm, then make tfjs-reference)"; fi

# The stamp is the hidden lockfile npm ci writes (touched too): older than package*.json means a stale install.
$(TFJS_REFERENCE)/node_modules/.package-lock.json: $(TFJS_REFERENCE)/package.json $(TFJS_REFERENCE)/package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts --prefix $(TFJS_REFERENCE) && touch $@

test:
	$(BIN)/python -m pytest -q tests

# deface (CenterFace) runs in its own venv: it pins its own OpenCV and onnxruntime.
bench:
	test -x .bench/deface-venv/bin/python || ($(PYTHON) -m venv .bench/deface-venv && .bench/deface-venv/bin/pip install -q deface)
	mkdir -p .bench/weights/retinaface
	test -f .bench/weights/retinaface/detection_mobilenet0.25_Final.pth || cp $(SHARED)/weights/retinaface_mobilenet0.25.pth .bench/weights/retinaface/detection_mobilenet0.25_Final.pth
	mkdir -p .bench/weights/human-models
	test -f .bench/weights/human-models/faceres.bin || cp $(SHARED)/weights/human-models/* .bench/weights/human-models/
	$(BIN)/python -m benchmarks.run --shared $(SHARED) --weights-dir .bench/weights

demo:
	rm -rf /tmp/anonymize-demo
	$(BIN)/anonymize run $(SHARED)/data/portraits --out /tmp/anonymize-demo --method blur --overwrite

clean:
	rm -rf $(VENV) .pytest_cache $(TFJS_REFERENCE)/node_modules
