# textclf: the README's two commands are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m textclf_cli demo

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf runs models .pytest_cache
