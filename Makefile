# The two commands a newcomer needs: `make run` (dashboard) and `make test` (whole suite).
.PHONY: setup run serve test test-fast bench

setup:
	./scripts/setup.sh

run: setup
	.venv/bin/python -m streamlit run Home.py

serve: setup
	.venv/bin/python -m core serve --host 127.0.0.1 --port 8000

test: setup
	UUSIC_TEST_POSTGRES_URL="$${UUSIC_TEST_POSTGRES_URL:-$$(./scripts/postgres.sh start)}" .venv/bin/python -m pytest -q

test-fast: setup
	UUSIC_TEST_POSTGRES_URL="$${UUSIC_TEST_POSTGRES_URL:-$$(./scripts/postgres.sh start)}" .venv/bin/python -m pytest -q -m "not browser and not server"

.PHONY: lint
lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
