.PHONY: setup demo test lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/pgloupe demo $(ARGS)

test: setup
	.venv/bin/python -m pytest $(ARGS)

lint: setup
	.venv/bin/ruff check .

clean:
	rm -rf .venv .venv-plain .pytest_cache *.egg-info
