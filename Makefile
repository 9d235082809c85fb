# `make demo` and `make test` set everything up on a fresh machine (scripts/setup.sh) the first time.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint app space

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/frames2lora demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks spaces

app: $(STAMP)
	$(BIN)/frames2lora app

# The Hugging Face Space: spaces/frames2lora/* and the peft_hyper package, ready for `hf upload --repo-type space`.
space:
	rm -rf build/space && mkdir -p build/space
	cp spaces/frames2lora/* build/space/
	cp -r src/peft_hyper build/space/
	find build/space -name __pycache__ -prune -exec rm -rf {} +
