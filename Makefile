# The two commands of the README:
#   make demo   set up .venv and run the main job on the embedded synthetic Alaska
#   make test   set up .venv and run lint, type checks, the import contract and the tests
.PHONY: setup demo test lint pytest bench clean

VENV ?= .venv
BIN := $(VENV)/bin

setup:
	@./scripts/setup.sh

demo: setup
	$(BIN)/miso-bench run --model miso --cv spatial --task pf1m
	$(BIN)/miso-bench run --model miso --cv spatial --task tax_order
	@echo "Compare runs in the MLflow dashboard: $(BIN)/miso-bench ui  (then open http://127.0.0.1:5000)"

lint: setup
	$(BIN)/ruff check miso_bench tests benchmarks
	$(BIN)/ruff format --check miso_bench tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: setup
	$(BIN)/python -m pytest

test: lint pytest

bench: setup
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_core.py
	$(BIN)/python benchmarks/bench_miso.py
	$(BIN)/python benchmarks/bench_fits.py
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_predict.py

clean:
	rm -rf .miso-bench .pytest_cache .mypy_cache .ruff_cache
