"""A user's own script: two tasks through with_strategies(Trainer or SFTTrainer), a ForgettingMonitor.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_user_script.py MODEL_FOLDER CHAT TEXT MC OUT
    python tests/ddp_user_script.py MODEL_FOLDER CHAT TEXT MC OUT --per-device 4

Used by tests/test_multiprocess.py (not collected: no test_ prefix). Writes OUT/final.safetensors (rank 0).
"""

import argparse
import json
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

import forgetless

parser = argparse.ArgumentParser()
for name in ("model", "chat", "text", "mc", "out"):
    parser.add_argument(name)
parser.add_argument("--per-device", type=int, default=2)
parser.add_argument("--trainer", default="trainer", choices=["trainer", "sft"])
parser.add_argument("--fp32", action="store_true", help="SFTConfig(bf16=False): TRL's SFTConfig defaults to bf16")
parser.add_argument("--strategies", default='[{"name": "ewc", "samples": 8, "lam": 100.0}, "replay"]', help="JSON list of specs")
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model)
rows = [json.loads(line) for line in Path(args.chat).read_text().splitlines()]
texts = [json.loads(line) for line in Path(args.text).read_text().splitlines()]
if args.trainer == "sft":
    tasks = [Dataset.from_list([{"prompt": r["prompt"], "completion": r["response"]} for r in rows]), Dataset.from_list(texts)]
else:  # plain Trainer: the user tokenizes; labels -100 on the prompt
    def encode(prompt, response):
        ids = tokenizer(prompt + response, truncation=True, max_length=48)["input_ids"]
        cut = len(tokenizer(prompt)["input_ids"])
        return {"input_ids": ids, "labels": [-100] * cut + ids[cut:]}

    tasks = [Dataset.from_list([encode(r["prompt"], r["response"]) for r in rows]),
             Dataset.from_list([encode("", t["text"]) for t in texts])]
monitor = forgetless.ForgettingMonitor(tasks=[args.mc], suites=[], every_steps=2, out_dir=args.out)
stack = json.loads(args.strategies)
for index, dataset in enumerate(tasks):
    settings = dict(output_dir=f"{args.out}/trainer", max_steps=4, per_device_train_batch_size=args.per_device,
                    learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True, seed=0, logging_steps=1)
    common = dict(model=model, train_dataset=dataset, processing_class=tokenizer, strategies=stack, total_tasks=2,
                  task_name=["chat", "text"][index], callbacks=[monitor])
    if args.trainer == "sft":
        precision = {"bf16": False} if args.fp32 else {}  # SFTConfig's own default is bf16
        trainer = forgetless.with_strategies(SFTTrainer)(args=SFTConfig(max_length=48, **settings, **precision), **common)
    else:
        trainer = forgetless.with_strategies(Trainer)(args=TrainingArguments(**settings), **common,
                                                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100))
    trainer.train()
    stack = trainer.strategy_stack  # the same strategies carry over to the next task
if PartialState().is_main_process:
    save_model(model, f"{args.out}/final.safetensors")
