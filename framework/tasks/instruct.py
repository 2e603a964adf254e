"""Instruction tuning of a causal LM, scored by greedy generation (docs/paper.md §4: Tables 3, 4).

One task class serves math (MetaMathQA → GSM8K, MATH), commonsense (Commonsense170K → eight sets),
code (Magicoder-Evol-Instruct → HumanEval(+), MBPP(+)) and instruction-style GLUE checks; the sources and
their scoring rules are in ``instruct_data``. What the task does:

- prompts follow one template per task (``TEMPLATES``: the source's own — Alpaca for MetaMathQA and
  Commonsense170K, Magicoder's for code — or the tokenizer's chat template for chat models);
- the loss covers the answer tokens only (prompt labels are -100); rows are cut at ``max_length``
  and rows whose prompt alone fills it are dropped (both counted in ``describe()``);
- evaluation generates greedily from left-padded batches (``max_new_tokens``) and scores each
  generation with its source's rule; generated code runs only in ``framework.sandbox``, and a problem
  with an EvalPlus suite gets a second verdict from the same generation (``<set>_plus``);
- data discipline: a seeded slice of the training source is the validation set that picks the
  epoch (``val_metric``: generation accuracy, or answer-token loss for sources without automatic
  scoring); the test sets are never used for selection. ``score`` is the selection metric: on val
  the val metric, on test the plain mean over test sets and verdicts (the paper's Avg columns). A task
  without a training source only evaluates (``trainer.epochs=0``, ``method=zero_shot``).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from framework.checks import is_int
from framework.fingerprint import tokenizer_fingerprint
from framework.models import Head, position_limit
from framework import sandbox as code_sandbox
from framework.tasks import answers
from framework.tasks.base import Task
from framework.tasks.instruct_data import Example, check_source, read_source, source_path
from framework.tasks.lm_rows import IGNORE, ListDataset, ensure_pad_token, load_rows, pad_batch, save_rows

VAL_METRICS = ("accuracy", "loss")
_ALPACA_HEAD = "Below is an instruction that describes a task{}. Write a response that appropriately completes the request.\n\n"
#: template name → (prompt without input, prompt with input); "chat" uses the tokenizer's chat template
TEMPLATES: dict[str, Optional[tuple[str, str]]] = {
    "alpaca": (_ALPACA_HEAD.format("") + "### Instruction:\n{instruction}\n\n### Response:\n",
               _ALPACA_HEAD.format(", paired with an input that provides further context")
               + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"),
    "magicoder": ("You are an exceptionally intelligent coding assistant that consistently delivers accurate and "
                  "reliable responses to user instructions.\n\n@@ Instruction\n{instruction}\n\n@@ Response\n",
                  "You are an exceptionally intelligent coding assistant that consistently delivers accurate and "
                  "reliable responses to user instructions.\n\n@@ Instruction\n{instruction}\n\n{input}\n\n@@ Response\n"),
    "chat": None,
}


class InstructTask(Task):
    model_kind = "causal-lm"
    processor_kind = "tokenizer"
    selection_metric = "score"

    def __init__(self, name: str, train: dict, test: dict, data_dir: Optional[str] = None, template: str = "alpaca",
                 instruction_suffix: Optional[str] = None, val_metric: str = "accuracy",
                 val_size: int | float = 500, split_seed: int = 0, max_train_samples: Optional[int] = None,
                 max_eval_samples: Optional[int] = None, max_length: int = 512, max_new_tokens: int = 256,
                 sandbox: Optional[dict] = None, keep_samples: int = 20,
                 cache_dir: str | os.PathLike | None = None):
        self.name, self.train_source, self.test_sources = name, dict(train or {}), dict(test or {})
        self.data_dir = None if data_dir is None else str(data_dir)
        self.template, self.instruction_suffix, self.val_metric = template, instruction_suffix, val_metric
        self.val_size, self.split_seed = val_size, split_seed
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.max_length, self.max_new_tokens = max_length, max_new_tokens
        self.sandbox = dict(sandbox or {})  # framework.sandbox.DEFAULTS fill the gaps (validate)
        self.keep_samples = keep_samples
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self._examples: Optional[dict[str, list[Example]]] = None
        self._info: dict[str, Any] = {}
        self.validate()

    # ---------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        if self.template not in TEMPLATES:
            raise ValueError(f"task.template={self.template!r} is not one of {list(TEMPLATES)}")
        if self.val_metric not in VAL_METRICS:
            raise ValueError(f"task.val_metric={self.val_metric!r} is not one of {list(VAL_METRICS)}")
        v = self.val_size
        if not ((is_int(v) and v >= 1) or (isinstance(v, float) and 0.0 < v < 1.0)):
            raise ValueError(f"task.val_size={v!r}: use a row count >= 1 or a fraction in (0, 1)")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and not (is_int(value) and value >= 1):
                raise ValueError(f"task.{key}={value!r} must be null or an integer >= 1")
        for key in ("max_length", "max_new_tokens"):
            if not (is_int(getattr(self, key)) and getattr(self, key) >= 1):
                raise ValueError(f"task.{key}={getattr(self, key)!r} must be an integer >= 1")
        if not self.test_sources:
            raise ValueError("task.test names no test set: give {name: {format, path}} entries")
        if self.train_source:  # an evaluation-only task (zero-shot) has none
            check_source(self.train_source, "task.train", self.data_dir)
        for set_name, source in self.test_sources.items():
            check_source(dict(source), f"task.test.{set_name}", self.data_dir)
        self.sandbox = code_sandbox.settings(self.sandbox)
        if _runs_code(self.test_sources):  # refused before any compute where the machine cannot contain it
            code_sandbox.require_isolation(self.sandbox["allow_weak"])

    def check_model(self, model_config) -> None:
        limit = position_limit(model_config) if model_config is not None else None
        if limit is not None and self.max_length > limit:
            raise ValueError(f"task.max_length={self.max_length} exceeds the model's {limit} positions; "
                             f"set task.max_length <= {limit}")

    def check_data(self) -> None:
        """Read every source now (not tokenise), so a malformed row fails before any compute."""
        if self._examples is None:
            train = read_source(self.train_source, "task.train", self.data_dir) if self.train_source else []
            tests = {n: read_source(dict(s), f"task.test.{n}", self.data_dir) for n, s in self.test_sources.items()}
            if self.val_metric == "accuracy" and any(e.scorer == "none" for e in train):
                raise ValueError(f"task.train ({self.train_source['format']}) has no automatic score: use "
                                 f"task.val_metric=loss to select epochs on the answer-token loss")
            unscored = [n for n, rows in tests.items() if any(e.scorer == "none" for e in rows)]
            if unscored:
                raise ValueError(f"test sets {unscored} have no automatic score; they cannot be test sets")
            self._examples = {"train": train, **{f"test/{n}": rows for n, rows in tests.items()}}

    def data_files(self) -> list:
        sources = [self.train_source] if self.train_source else []
        for source in self.test_sources.values():
            sources += [dict(source)] + ([dict(source["plus"])] if source.get("plus") else [])
        return [source_path(s, self.data_dir) for s in sources if s.get("path") is not None]

    def check_processor(self, tokenizer) -> None:
        if self.template == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"task.template=chat but tokenizer {tokenizer.name_or_path!r} has no chat template; "
                             f"use one of {[t for t in TEMPLATES if t != 'chat']} (task.template=alpaca)")
        if tokenizer.pad_token_id is None and tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an EOS token: batches "
                             f"cannot be padded and generations cannot end")

    @property
    def has_train_data(self) -> bool:
        return bool(self.train_source)

    def head(self) -> Head:
        return Head(model_kwargs={}, trains=False)  # the LM head stays frozen

    # ---------------------------------------------------------------------------------- prompts
    def prompt_text(self, example: Example, tokenizer) -> str:
        instruction = example.instruction + (f"\n{self.instruction_suffix}" if self.instruction_suffix else "")
        if self.template == "chat":
            self.check_processor(tokenizer)
            content = instruction + (f"\n\n{example.input}" if example.input else "")
            return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True)
        plain, with_input = TEMPLATES[self.template]
        return (with_input if example.input else plain).format(instruction=instruction, input=example.input)

    def _prompt_ids(self, examples: list[Example], tokenizer) -> list[np.ndarray]:
        texts = [self.prompt_text(e, tokenizer) for e in examples]
        # a chat template writes its own special tokens; a plain template gets the tokenizer's BOS
        encoded = tokenizer(texts, add_special_tokens=self.template != "chat")["input_ids"] if texts else []
        return [np.asarray(ids, dtype=np.int32) for ids in encoded]

    def train_rows(self, examples: list[Example], tokenizer) -> tuple[list[dict], dict]:
        """Training rows as the trainer sees them: prompt + target + EOS, prompt labelled -100, cut to max_length
        (rows whose prompt alone is too long dropped); with counts of both."""
        prompts = self._prompt_ids(examples, tokenizer)
        targets = tokenizer([e.target for e in examples], add_special_tokens=False)["input_ids"] if examples else []
        rows, truncated, dropped = [], 0, 0
        for prompt, target in zip(prompts, targets):
            ids = np.concatenate([prompt, np.asarray([*target, tokenizer.eos_token_id], dtype=np.int32)])
            if len(prompt) >= self.max_length:
                dropped += 1
                continue
            truncated += len(ids) > self.max_length
            ids = ids[:self.max_length]
            labels = ids.copy()
            labels[:len(prompt)] = IGNORE
            rows.append({"input_ids": ids, "labels": labels})
        return rows, {"truncated": int(truncated), "dropped_prompt_too_long": int(dropped)}

    def _cached_train_rows(self, examples: list[Example], tokenizer) -> tuple[list[dict], dict]:
        """``train_rows`` through a cache (``cache_dir/instruct_tokenized``) keyed by the examples' text, the
        template, ``max_length`` and the tokenizer's definition: a sweep tokenises MetaMathQA once, not per run."""
        if self.cache_dir is None:
            return self.train_rows(examples, tokenizer)
        texts = hashlib.sha256()
        for e in examples:
            texts.update("\0".join((e.instruction, e.input, e.target)).encode("utf-8") + b"\1")
        key_fields = {"format": 1, "examples": texts.hexdigest(), "template": self.template,
                      "instruction_suffix": self.instruction_suffix, "max_length": self.max_length,
                      "tokenizer": tokenizer_fingerprint(tokenizer), "eos": tokenizer.eos_token_id,
                      "chat_template": getattr(tokenizer, "chat_template", None) if self.template == "chat" else None}
        key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode("utf-8")).hexdigest()
        path = self.cache_dir / "instruct_tokenized" / f"{self.name}-{key[:20]}.npz"
        hit = path.is_file()
        rows, stats = load_rows(path) if hit else self.train_rows(examples, tokenizer)
        if not hit:
            save_rows(path, rows, stats)
        self._info["tokenized_cache"] = {"path": str(path), "hit": hit}
        return rows, stats

    def eval_rows(self, examples: list[Example], set_names: list[str], tokenizer) -> list[dict]:
        """Generation rows as the trainer scores them (each knows its set name), longest prompt first."""
        prompts = self._prompt_ids(examples, tokenizer)
        rows = [{"prompt_ids": p, "set": s, "scorer": e.scorer, "reference": e.reference, "keywords": e.keywords}
                for p, s, e in zip(prompts, set_names, examples)]
        return sorted(rows, key=lambda r: -len(r["prompt_ids"]))  # similar lengths share a batch: less padding

    # ------------------------------------------------------------------------------------ data
    def examples(self, source: str) -> list[Example]:
        """The examples read from one source: "train" or "test/<name>" (in file order)."""
        self.check_data()
        if source not in self._examples:
            raise ValueError(f"source {source!r} is not one of {sorted(self._examples)}")
        return self._examples[source]

    def test_positions(self) -> dict[str, list[int]]:
        """Each test set's rows that are scored, as positions in its file: a seeded draw of max_eval_samples."""
        self.check_data()
        eval_seq = self._seed_streams()[2]
        return {n: _subset_positions(len(self._examples[f"test/{n}"]), self.max_eval_samples, eval_seq)
                for n in self.test_sources}

    def _seed_streams(self) -> list[np.random.SeedSequence]:
        """The three streams from split_seed: train/val split, training subset, evaluation subsets."""
        return np.random.SeedSequence(self.split_seed).spawn(3)

    @staticmethod
    def _subset(rows: list, count: Optional[int], stream: np.random.SeedSequence) -> list:
        return [rows[i] for i in _subset_positions(len(rows), count, stream)]

    def _use_tokenizer(self, tokenizer) -> None:
        self.check_data()
        self._info["pad_token_set_to"] = ensure_pad_token(tokenizer) or self._info.get("pad_token_set_to")

    def _test_split(self, tokenizer) -> ListDataset:
        """The test sets as one generation split (each row knows its set)."""
        tests = {n: [self._examples[f"test/{n}"][i] for i in positions]
                 for n, positions in self.test_positions().items()}
        rows = self.eval_rows([e for r in tests.values() for e in r], [n for n, r in tests.items() for _ in r],
                               tokenizer)
        self._info.update(test_sizes={n: len(r) for n, r in tests.items()},
                          longest_eval_prompt=max(len(r["prompt_ids"]) for r in rows))
        return ListDataset(rows)

    def splits(self, tokenizer) -> dict[str, ListDataset]:
        """Train / val (a seeded slice of the training source) / test; without a training source
        (an evaluation-only task, run with trainer.epochs=0) train and val are empty."""
        self._use_tokenizer(tokenizer)
        if not self.train_source:
            test = self._test_split(tokenizer)
            self._info.update(sizes={"train": 0, "val": 0, "test": len(test)})
            return {"train": ListDataset([]), "val": ListDataset([]), "test": test}
        pool = self._examples["train"]
        split_seq, train_seq, eval_seq = self._seed_streams()
        n_val = round(self.val_size * len(pool)) if isinstance(self.val_size, float) else int(self.val_size)
        if not 1 <= n_val < len(pool):
            raise ValueError(f"task.val_size={self.val_size!r} gives {n_val} validation rows from {len(pool)} "
                             f"training rows; it must leave at least one row on each side")
        order = np.random.default_rng(split_seq).permutation(len(pool))
        val = self._subset([pool[i] for i in np.sort(order[:n_val])], self.max_eval_samples, eval_seq)
        train = self._subset([pool[i] for i in np.sort(order[n_val:])], self.max_train_samples, train_seq)
        train_rows, stats = self._cached_train_rows(train, tokenizer)
        if not train_rows:
            raise ValueError(f"every training row's prompt is longer than task.max_length={self.max_length}")
        if self.val_metric == "loss":
            val_rows, _ = self.train_rows(val, tokenizer)
        else:
            val_rows = self.eval_rows(val, ["val"] * len(val), tokenizer)
        test = self._test_split(tokenizer)
        self._info.update(sizes={"train": len(train_rows), "val": len(val_rows), "test": len(test)},
                          train_pool_size=len(pool) - n_val, val_size=n_val, train_rows=stats)
        return {"train": ListDataset(train_rows), "val": ListDataset(val_rows), "test": test}

    def collate(self, tokenizer, split: str) -> Callable[[list[dict]], dict]:
        ensure_pad_token(tokenizer)
        pad = tokenizer.pad_token_id

        def lm_batch(rows: list[dict]) -> dict:
            ids = pad_batch([r["input_ids"] for r in rows], pad, left=False)
            mask = pad_batch([np.ones(len(r["input_ids"]), np.int32) for r in rows], 0, left=False)
            return {"input_ids": ids, "attention_mask": mask,
                    "labels": pad_batch([r["labels"] for r in rows], IGNORE, left=False)}

        def generation_batch(rows: list[dict]) -> dict:
            ids = pad_batch([r["prompt_ids"] for r in rows], pad, left=True)
            mask = pad_batch([np.ones(len(r["prompt_ids"]), np.int32) for r in rows], 0, left=True)
            return {"input_ids": ids, "attention_mask": mask, **{k: [r[k] for r in rows]
                                                                 for k in ("set", "scorer", "reference", "keywords")}}

        return lm_batch if split == "train" or (split == "val" and self.val_metric == "loss") else generation_batch

    # ------------------------------------------------------------------------- loss and scores
    def training_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

    def generate(self, model: torch.nn.Module, batch: dict, tokenizer) -> list[str]:
        """Greedy continuations of a left-padded batch, decoded without special tokens."""
        from transformers import GenerationConfig

        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             generation_config=config)
        new = out[:, batch["input_ids"].shape[1]:]
        return tokenizer.batch_decode(new, skip_special_tokens=True)

    def score(self, generations: list[str], batch: dict) -> list[dict[str, bool]]:
        """Each generation against its reference, by its source's rule (code: in the sandbox). A verdict is
        ``{"base": flag}``, plus ``"plus"`` for code with EvalPlus tests (base and plus tests all pass)."""
        limits = {k: self.sandbox[k] for k in ("timeout_s", "memory_mb", "disk_mb", "max_files", "allow_weak")}

        def run(program: tuple[str, str]) -> bool:
            return code_sandbox.run_program(*program, **limits).passed

        def one(i: int) -> dict[str, bool]:
            text, scorer, ref = generations[i], batch["scorer"][i], batch["reference"][i]
            if scorer == "gsm8k":
                return {"base": answers.gsm8k_correct(text, ref)}
            if scorer == "math":
                return {"base": answers.math_correct(text, ref)}
            if scorer == "keyword":
                return {"base": answers.keyword_correct(text, ref, batch["keywords"][i])}
            if scorer == "humaneval":  # a suite: the source of a check(candidate) function
                def program(suite) -> tuple[str, str]:
                    return code_sandbox.humaneval_program(ref["prompt"], text, suite, ref["entry_point"])
                base = ref["test"]
            elif scorer == "mbpp":  # a suite: a list of statements run after the code
                def program(suite) -> tuple[str, str]:
                    return code_sandbox.mbpp_program(text, suite, ref["setup"])
                base = ref["tests"]
            else:
                raise ValueError(f"scorer {scorer!r} cannot score a generation")
            verdict = {"base": run(program(base))}
            if ref.get("plus_test") is not None:  # EvalPlus: the plus suite counts only where the base passes
                verdict["plus"] = verdict["base"] and run(program(ref["plus_test"]))
            return verdict

        indices = range(len(generations))
        if any(s in ("humaneval", "mbpp") for s in batch["scorer"]):
            with ThreadPoolExecutor(max_workers=int(self.sandbox["workers"])) as pool:
                return list(pool.map(one, indices))
        return [one(i) for i in indices]

    def eval_step(self, model: torch.nn.Module, batch: dict, tokenizer) -> Any:
        """A val batch built for ``val_metric=loss``: per row, the answer tokens' summed loss and count (tensors);
        a generation batch: per row, a record of its set, its verdict and the generation."""
        if "labels" in batch:  # teacher-forced answer-token loss
            nll, count = self._answer_nll(model, batch)
            return {"nll": nll, "tokens": count}
        texts = self.generate(model, batch, tokenizer)
        return [{"set": set_name, "verdict": {k: bool(v) for k, v in verdict.items()}, "generation": text}
                for set_name, verdict, text in zip(batch["set"], self.score(texts, batch), texts)]

    def metrics(self, outputs: list) -> dict[str, float]:
        """Generation scores per set (val: ``accuracy``; test: one per set and their mean), or minus the
        answer-token loss for a val split built for ``val_metric=loss``."""
        nll_total, tokens = 0.0, 0
        for losses in (o for o in outputs if isinstance(o, dict)):
            nll_total, tokens = nll_total + float(losses["nll"].sum()), tokens + int(losses["tokens"].sum())
        if tokens:
            return {"score": -nll_total / tokens, "loss": nll_total / tokens}
        flags_by_set: dict[str, list[bool]] = {}
        for record in self._records(outputs):
            for kind, flag in record["verdict"].items():  # "base" scores the set, "plus" the set's EvalPlus twin
                name = record["set"] if kind == "base" else f"{record['set']}_{kind}"
                flags_by_set.setdefault(name, []).append(flag)
        if set(flags_by_set) == {"val"}:
            value = answers.accuracy(flags_by_set["val"])
            return {"score": value, "accuracy": value}
        metrics = {name: answers.accuracy(flags) for name, flags in flags_by_set.items()}
        return {**metrics, "score": float(np.mean(list(metrics.values())))}

    @staticmethod
    def _records(outputs: list) -> list[dict]:
        return [record for batch in outputs if isinstance(batch, list) for record in batch]

    def samples(self, outputs: list) -> list[dict]:
        """The first ``keep_samples`` generations of a pass, with their verdicts (``generations.jsonl``)."""
        return [{"set": r["set"], "correct": r["verdict"]["base"],
                 **{f"correct_{k}": v for k, v in r["verdict"].items() if k != "base"}, "generation": r["generation"]}
                for r in self._records(outputs)[:self.keep_samples]]

    @staticmethod
    def _answer_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: summed negative log-likelihood of the answer tokens, and their count."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE,
                                                reduction="none").sum(dim=1)
        return nll, (labels != IGNORE).sum(dim=1)

    # --------------------------------------------------------------------------------- records
    def artifacts(self, model, output_dir, tracker, test_outputs: list) -> dict[str, str]:
        """The first generations of the best state's test pass, with their verdicts."""
        samples = self.samples(test_outputs)
        if not samples:
            return {}
        path = Path(output_dir) / "generations.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
        return {"generations": str(path)}

    def describe(self) -> dict:
        return {
            "name": self.name, "kind": "instruction tuning (causal LM, greedy generation)",
            "template": self.template, "instruction_suffix": self.instruction_suffix,
            "data_dir": self.data_dir, "train_source": self.train_source, "test_sources": self.test_sources,
            "split": "val = a seeded slice of the training source; test sets never used for selection",
            "split_seed": self.split_seed, "val_metric": self.val_metric,
            "score": {"val": "accuracy of greedy generations" if self.val_metric == "accuracy"
                      else "minus the mean answer-token loss",
                      "test": "mean over test sets of their accuracy / pass@1"},
            "max_length": self.max_length, "max_new_tokens": self.max_new_tokens,
            "max_train_samples": self.max_train_samples, "max_eval_samples": self.max_eval_samples,
            "sandbox": {**self.sandbox, **_sandbox_isolation(self.test_sources)},
            **self._info,
        }


def _subset_positions(size: int, count: Optional[int], stream: np.random.SeedSequence) -> list[int]:
    """``count`` of ``size`` positions drawn by ``stream``, in order (all of them if count is None or larger)."""
    if count is None or count >= size:
        return list(range(size))
    return np.sort(np.random.default_rng(stream).permutation(size)[:count]).tolist()


def _runs_code(test_sources: dict) -> bool:
    return any(dict(s).get("format") in ("humaneval", "mbpp") for s in test_sources.values())


def _sandbox_isolation(test_sources: dict) -> dict:
    """What the machine's sandbox gave (recorded in the result), for a task that runs generated code."""
    return {"isolation": code_sandbox.isolation()} if _runs_code(test_sources) else {}
