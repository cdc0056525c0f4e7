PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared

.PHONY: install test bench demo clean

# torch/torchvision are pinned to the builds the build machines carry (facexlib needs a working torchvision).
install:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23"
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	-@if command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "chromium not installed: the HTML report browser test will skip"; fi

test:
	$(BIN)/python -m pytest -q tests

# deface (CenterFace) runs in its own venv: it pins its own OpenCV and onnxruntime.
bench:
	test -x .bench/deface-venv/bin/python || ($(PYTHON) -m venv .bench/deface-venv && .bench/deface-venv/bin/pip install -q deface)
	mkdir -p .bench/weights/retinaface
	test -f .bench/weights/retinaface/detection_mobilenet0.25_Final.pth || cp $(SHARED)/weights/retinaface_mobilenet0.25.pth .bench/weights/retinaface/detection_mobilenet0.25_Final.pth
	$(BIN)/python -m benchmarks.run --shared $(SHARED) --weights-dir .bench/weights

demo:
	rm -rf /tmp/anonymize-demo
	$(BIN)/anonymize run $(SHARED)/data/portraits --out /tmp/anonymize-demo --method blur --overwrite

clean:
	rm -rf $(VENV) .pytest_cache
