# textclf: the README's two commands are `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean

setup:
	@scripts/setup.sh

demo: setup
	$(PY) -m textclf_cli demo

# The deployment tests drive real nginx / Prometheus / docker-compose from Debian packages and
# build and run the real images (docker.io, a debootstrap'ed base image): install them when
# missing (the tests skip with the script's message where that is impossible).
test: setup
	-@scripts/install_test_deps.sh
	$(PY) -m pytest -q

clean:
	rm -rf runs models .pytest_cache
