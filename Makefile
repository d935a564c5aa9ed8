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

# System packages from Debian, installed here when missing (as root, with apt-get):
# chromium + chromium-driver for the page's browser test (tests/service/test_browser.py), and
# fonts-unifont, the Unicode font annotated images use for labels in non-Latin scripts
# (without it they fall back to Pillow's Latin-only font, with a warning). Otherwise the tests
# that need them are skipped with a loud warning, never silently.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	   && [ -f /usr/share/fonts/opentype/unifont/unifont.otf ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing chromium, chromium-driver and fonts-unifont (apt) for the browser and drawing tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-unifont >/dev/null) \
	    || echo "make: WARNING: could not install chromium / fonts-unifont; their tests will be SKIPPED"; \
	else \
	  echo "make: WARNING: no chromium/chromedriver/fonts-unifont and no root apt-get: their tests will be SKIPPED"; \
	fi

# The main job: the bundled ShapeWorld-OV ViLD-ensemble model on the bundled example images,
# over its default vocabulary (all 24 categories; the 8 rare ones were never seen labelled).
demo: $(STAMP)
	$(BIN)/vild detect --out demo-output --threshold 0.3
	@echo "annotated images, results.json (COCO results) and run.json are in demo-output/"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
