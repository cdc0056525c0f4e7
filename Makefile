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

bench:
	$(BIN)/python -m benchmarks.run --shared $(SHARED)

demo:
	rm -rf /tmp/anonymize-demo
	$(BIN)/anonymize run $(SHARED)/data/portraits --out /tmp/anonymize-demo --method blur --detector dlib-hog --overwrite

clean:
	rm -rf $(VENV) .pytest_cache
