# The two commands a newcomer needs: `make run` (dashboard) and `make test` (whole suite).
.PHONY: setup run serve test test-fast bench

setup:
	./scripts/setup.sh

run: setup
	.venv/bin/python -m streamlit run Home.py

serve: setup
	.venv/bin/python -m core serve --host 127.0.0.1 --port 8000

test: setup
	UUSIC_TEST_POSTGRES_URL="$${UUSIC_TEST_POSTGRES_URL:-$$(./scripts/postgres.sh start)}" UUSIC_TEST_DICOMWEB_URL="$${UUSIC_TEST_DICOMWEB_URL:-$$(./scripts/orthanc.sh start 2>/dev/null || true)}" .venv/bin/python -m pytest -q

test-fast: setup
	UUSIC_TEST_POSTGRES_URL="$${UUSIC_TEST_POSTGRES_URL:-$$(./scripts/postgres.sh start)}" UUSIC_TEST_DICOMWEB_URL="$${UUSIC_TEST_DICOMWEB_URL:-$$(./scripts/orthanc.sh start 2>/dev/null || true)}" .venv/bin/python -m pytest -q -m "not browser and not server"

# Issue 20: order independence, a busy machine, other CPU kernels (see the README's Testing section).
SEED ?= $(shell date +%s)
.PHONY: test-random test-browser-loaded test-portable
test-random: setup
	UUSIC_TEST_POSTGRES_URL="$${UUSIC_TEST_POSTGRES_URL:-$$(./scripts/postgres.sh start)}" UUSIC_TEST_DICOMWEB_URL="$${UUSIC_TEST_DICOMWEB_URL:-$$(./scripts/orthanc.sh start 2>/dev/null || true)}" .venv/bin/python -m pytest -q -p no:cacheprovider --random-order --random-order-seed=$(SEED)

test-browser-loaded: setup
	./scripts/browser_under_load.sh

PINS = tests/test_release_parity.py tests/test_engine.py tests/test_api.py tests/test_backends.py::test_fp32_backend_matches_eager_on_the_samples
test-portable: setup
	ATEN_CPU_CAPABILITY=default .venv/bin/python -m pytest -q -p no:cacheprovider $(PINS)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python -m pytest -q -p no:cacheprovider $(PINS)

.PHONY: lint
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
