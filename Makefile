# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean browser-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev,serve,browser]"
	touch $(STAMP)

test: $(STAMP) browser-deps
	$(BIN)/python -m pytest -q tests

# The page's browser test (tests/service/test_browser.py) needs Debian's chromium and
# chromium-driver: installed here when missing (as root, with apt-get); otherwise the test
# is skipped with a loud warning, never silently.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing chromium + chromium-driver (apt) for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "make: WARNING: could not install chromium; the browser test will be SKIPPED"; \
	else \
	  echo "make: WARNING: no chromium/chromedriver and no root apt-get: the browser test will be SKIPPED"; \
	fi

# The main job: the bundled ShapeWorld-OV ViLD-ensemble model on the bundled example images,
# over its default vocabulary (all 24 categories; the 8 rare ones were never seen labelled).
demo: $(STAMP)
	$(BIN)/vild detect --out demo-output --threshold 0.3
	@echo "annotated images, results.json (COCO results) and run.json are in demo-output/"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
