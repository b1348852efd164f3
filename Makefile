# `make install` builds .venv with the CPU torch wheel (never the multi-GB CUDA download),
# `make test` installs if needed and runs the suite, `make demo` runs the main job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test lint test-automl test-tflite demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on this machine kind the pin resolves to the local CPU wheel.
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test,export,video,pretrained,lint]"
	touch $(STAMP)

test: install
	$(PY) -m pytest -n 2 -q --durations=25 tests

# formatting, lint and types (config in pyproject.toml; mypy checks src/efficientdet, py.typed)
lint: install
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

# load_weights(source="automl") against the official model's outputs, in the TensorFlow env
# (TF 2.15 needs numpy < 2, so not in .venv): benchmarks/official/.venv, built on first use
test-automl:
	bash benchmarks/official/setup_official.sh
	benchmarks/official/.venv/bin/python -m pytest -q -p no:cacheprovider -m tensorflow tests/test_weights_automl.py

# TFLite export, the LiteRT backend and the MediaPipe client, in the [tflite] env layered over .venv
# (benchmarks/tflite/.venv, built on first use)
test-tflite: install
	bash benchmarks/tflite/setup_tflite.sh
	benchmarks/tflite/.venv/bin/python -m pytest -q -p no:cacheprovider -m tflite tests/test_export_tflite.py

demo: install
	$(VENV)/bin/efficientdet demo   # a new runs/demo/N each time

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
