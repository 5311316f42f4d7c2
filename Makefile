# `make test` builds .venv on first use, installs the project with its dev extras, and runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow mutation demo demo-chat install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The long tests (multi-process DDP, SIGKILL and resume); CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

# Deliberate bugs, one at a time, each of which the named tests must catch (tests/mutation_check.py); a few minutes.
mutation: $(STAMP)
	$(BIN)/python tests/mutation_check.py

# Tokenizer, data and a tiny model trained on the chitchat corpus, on CPU; results in runs/demo/.
demo: $(STAMP)
	$(BIN)/python train.py configs/tiny.yaml

# The demo model fine-tuned into a chat model: LoRA, loss on assistant turns only, on chitchat conversations, on CPU;
# results in runs/demo-chat/ (the adapter in runs/demo-chat/adapter). Runs `make demo` first if it has not run.
demo-chat: $(STAMP)
	test -f runs/demo/model.safetensors || $(BIN)/python train.py configs/tiny.yaml
	$(BIN)/python train.py configs/chat_lora.yaml --model_name_or_path runs/demo --output_dir runs/demo-chat \
		--use_cpu true --learning_rate 2e-3 --lora_target_modules qkv out_proj fc_in fc_out \
		--per_device_train_batch_size 32 --max_steps 300 --eval_steps 150 --save_steps 150

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
