"""Generate labs/*.ipynb from the Python source below (nbformat), always without outputs.

Edit the lab text here, then run ``python tools/make_labs.py`` (``--check`` exits 1 if a committed
notebook differs from what this file generates). Each lab is a list of cells built with
:func:`md`, :func:`code` and :func:`params`; every lab starts with the same head: goals, a
``parameters``-tagged cell (papermill), a Colab install cell and the setup cell.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
LABS_DIR = ROOT / "labs"

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


def params(text: str) -> nbformat.NotebookNode:
    cell = code(text)
    cell.metadata["tags"] = ["parameters"]
    return cell


COMMON_PARAMS = '''
SMOKE = False  # True: tiny sizes (CI, a quick look); False: workshop sizes
MODEL = "smollm2-135m"  # "tiny" in smoke mode; any HF id or local folder works too
SEED = 0
LANGUAGE = "en"  # "ko": panel labels and help in Korean
REUSE_RUNS = True  # reuse finished training runs from the run store (LABKIT_HOME/runs)
'''

INSTALL = '''
# Colab (or any Python without labkit): install it. Elsewhere this cell does nothing.
import importlib.util, sys
LABKIT_SOURCE = "labkit"  # a wheel, a git URL or a folder, if your workshop hands one out
if "google.colab" in sys.modules or importlib.util.find_spec("labkit") is None:
    %pip install -q {LABKIT_SOURCE}
'''


def head(number: str, title: str, goals: list[str], extra_params: str, derived: str) -> list:
    goal_lines = "\n".join(f"- {g}" for g in goals)
    intro = (
        f"# {number} · {title}\n\n**Goals**\n\n{goal_lines}\n\n"
        "Run the cells top to bottom (JupyterLab, VS Code or Colab). The first code cell holds every\n"
        "knob; sizes left at `None` are picked from `SMOKE` (tiny and fast) or the workshop defaults.\n"
        f"`labkit report labs/{number}_*.ipynb -p NAME VALUE` runs the lab with other values and writes\n"
        "an HTML report you can open offline."
    )
    return [
        nbformat.v4.new_markdown_cell(intro),
        params(COMMON_PARAMS.strip() + "\n" + textwrap.dedent(extra_params).strip()),
        code(INSTALL),
        code(
            "from labkit.notebook import setup, pick, record, takeaway, curves, table\n"
            "LAB = setup(SMOKE, seed=SEED, language=LANGUAGE)\n"
            + textwrap.dedent(derived).strip()
        ),
    ]


def store_cell() -> nbformat.NotebookNode:
    return code("""
    from labkit.train import RunStore, TrainConfig, train
    STORE = RunStore() if REUSE_RUNS else None
    PROGRESS = not LAB.report  # tqdm bars in a live notebook, none in reports
    """)


# =============================================================================================
# 00 · The training loop
# =============================================================================================
def lab00() -> list:
    cells = head(
        "00",
        "The training loop",
        [
            "See a batch: instruction records → chat-formatted tokens → padded tensors, prompt masked out of the loss.",
            "Run forward → loss → backward → update by hand on real tensors, and watch the weights move.",
            "Compare training and inference memory: what training keeps that inference does not.",
            "Pretrain the `tiny` base by next-token prediction and read what it learned.",
            "Tell pretraining from fine-tuning, and the Trainer API from your own loop.",
        ],
        '''
        TASK = "text2sql"
        BATCH_SIZE: int | None = None  # None: 4 in smoke mode, 8 otherwise
        SEQ_LEN: int | None = None  # None: 128 / 192
        PRETRAIN_STEPS: int | None = None  # None: 15 / 150
        PRETRAIN_CHARS = 200_000  # characters of Shakespeare for the fresh pretraining run
        TRAIN_EXAMPLES: int | None = None  # None: 64 in smoke mode, the whole train split otherwise
        FINETUNE_STEPS: int | None = None  # None: 6 / 60
        EVAL_EXAMPLES: int | None = None  # None: 4 / 40
        LR = 1e-4
        ''',
        """
        BATCH_SIZE = pick(BATCH_SIZE, smoke=4, full=8)
        SEQ_LEN = pick(SEQ_LEN, smoke=128, full=192)
        PRETRAIN_STEPS = pick(PRETRAIN_STEPS, smoke=15, full=150)
        TRAIN_EXAMPLES = pick(TRAIN_EXAMPLES, smoke=64, full=None)
        FINETUNE_STEPS = pick(FINETUNE_STEPS, smoke=6, full=60)
        EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, full=40)
        """,
    )
    cells += [
        store_cell(),
        md("""
        ## 1 · Batches and data loading

        A fine-tuning example is an *instruction record* — `instruction`, `input`, `output`. The
        tokenizer's **chat template** writes it as one conversation (ChatML: `<|im_start|>user …`),
        the tokens become ids, and several examples are padded into one rectangular **batch**.
        The labels are the same ids, except the prompt's, which are set to `-100`: the loss only
        counts the answer (*prompt masking*).
        """),
        code("""
        from labkit.models import load_model, load_tokenizer
        from labkit.tasks import build_prompt, collate, load_task, tokenize_for_training

        tokenizer = load_tokenizer(MODEL)
        data = load_task(TASK, seed=SEED)
        print(data)
        example = data["train"][0]
        print(build_prompt(tokenizer, example) + example["output"])
        """),
        code("""
        features = tokenize_for_training(tokenizer, list(data["train"].select(range(BATCH_SIZE))), SEQ_LEN)
        batch = collate(features, tokenizer.pad_token_id)
        print({name: tuple(t.shape) for name, t in batch.items()})
        answer_share = float((batch["labels"] != -100).sum() / batch["attention_mask"].sum())
        record("answer_token_share", answer_share)
        """),
        md("""
        **Try this:** raise `SEQ_LEN` and look at the padding (`attention_mask == 0`); find the
        `-100`s in `batch["labels"][0]` and decode the ids that are *not* masked.
        """),
        md("""
        ## 2 · Forward → loss → backward → update, on real tensors

        One optimizer step, nothing hidden: the **forward pass** gives logits and the
        cross-entropy **loss**; the **backward pass** fills `.grad` of every weight; the
        **optimizer** (AdamW) moves each weight against its gradient.
        """),
        code("""
        import torch

        model = load_model(MODEL)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        weight = model.model.layers[0].self_attn.q_proj.weight
        before = weight.detach().clone()

        out = model(**batch)  # forward (the model shifts the labels and computes the loss)
        out.loss.backward()  # backward
        print(f"loss {out.loss.item():.4f}; gradient norm of one q_proj matrix {weight.grad.norm():.3e}")
        optimizer.step()  # update
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            loss_after = model(**batch).loss.item()
        print(f"largest weight change {(weight.detach() - before).abs().max():.2e}; loss on the same batch now {loss_after:.4f}")
        record("loss_before_step", out.loss.item())
        record("loss_after_step", loss_after)
        """),
        code('takeaway("One step = forward (loss) → backward (gradients) → update (weights move against the gradient); the same batch now has a lower loss.")'),
        md("""
        ## 3 · Training vs inference memory

        Inference keeps the **weights** and a few activations at a time. Training also keeps a
        **gradient** per weight, the **optimizer state** (AdamW: two fp32 numbers per weight) and
        the **activations** of the whole forward pass, saved for the backward pass. Measured
        here tensor by tensor (saved-tensor hooks for activations), not estimated.
        """),
        code("""
        from labkit.memory.measure import measure
        from labkit.memory.setup import MemorySetup

        device = "cuda" if LAB.device == "cuda" else "cpu"
        mem_train = measure(MODEL, MemorySetup(mode="train", batch=BATCH_SIZE, seq=SEQ_LEN, device=device), check_fits=False)
        mem_infer = measure(MODEL, MemorySetup(mode="inference", batch=BATCH_SIZE, seq=SEQ_LEN, device=device), check_fits=False)
        rows = [{"component": k, "training MiB": mem_train.bytes[k] / 2**20, "inference MiB": mem_infer.bytes[k] / 2**20}
                for k in mem_train.bytes if mem_train.bytes[k] or mem_infer.bytes[k]]
        rows.append({"component": "peak", "training MiB": mem_train.peak / 2**20, "inference MiB": mem_infer.peak / 2**20})
        display(table(rows))
        record("train_over_inference_peak", mem_train.peak / max(mem_infer.peak, 1))
        """),
        code('takeaway("Training needs several times the memory of inference: gradients, optimizer state and saved activations come on top of the weights.")'),
        md("""
        ## 4 · Pretraining the `tiny` base: next-token prediction

        **Pretraining** teaches a model language itself: every position of raw text predicts the
        next token. labkit pretrains `tiny` (a ~4M-parameter Llama) on Shakespeare plus Python's
        manual. Below, a fresh short run (`PRETRAIN_STEPS`) into a lab folder, next to the shared
        `tiny` base that every other lab fine-tunes.
        """),
        code("""
        import json, pathlib
        from transformers import LlamaForCausalLM
        from labkit.data.corpus import shakespeare_texts
        from labkit.models import resolve_model, sample_text, tiny_config
        from labkit.notebook import next_token_loop

        base_tok = load_tokenizer("tiny")
        text = "\\n".join(shakespeare_texts())[:PRETRAIN_CHARS]
        ids = base_tok(text, return_tensors="pt").input_ids[0]
        torch.manual_seed(SEED)
        fresh = LlamaForCausalLM(tiny_config())  # random weights: knows nothing yet
        fresh_losses = next_token_loop(fresh, ids, steps=PRETRAIN_STEPS, batch_size=8, seq_len=64, seed=SEED)
        shared = json.loads((pathlib.Path(resolve_model("tiny")) / "pretraining.json").read_text())
        curves({f"fresh model, this run ({PRETRAIN_STEPS} steps)": fresh_losses,
                f"shared tiny base ({shared['steps']} steps, batch {shared['batch_size']})": shared["losses"]},
               title="Pretraining loss (next-token cross-entropy)").show()
        record("pretrain_first_loss", fresh_losses[0])
        record("pretrain_last_loss", sum(fresh_losses[-3:]) / 3)
        """),
        code("""
        base = load_model("tiny")
        for prompt in ("Enter HAMLET.", "The function"):
            print(repr(prompt))
            print("   fresh:", repr(sample_text(fresh, base_tok, prompt, max_new_tokens=30, seed=SEED)))
            print("   tiny: ", repr(sample_text(base, base_tok, prompt, max_new_tokens=30, seed=SEED)))
        """),
        md("""
        What it learned: the *shape* of its text — speaker names, line breaks, common words — but
        no task. Loss starts near ln(vocabulary) ≈ 8.3 (a uniform guess over 4,096 tokens) and
        falls as the model learns which tokens follow which.

        **Try this:** pretrain with `PRETRAIN_STEPS = 300` and compare the samples.
        """),
        md("""
        ## 5 · Pretraining vs fine-tuning

        | | pretraining | fine-tuning |
        |---|---|---|
        | data | raw text, huge | instruction records, small |
        | loss on | every token | the answer tokens only |
        | starts from | random weights | a pretrained base |
        | teaches | language | a behaviour / task format |

        Fine-tuning the chosen `MODEL` on the task with labkit's engine (`labkit.train.train`):
        """),
        code("""
        from labkit.tasks import evaluate_model
        base_model = load_model(MODEL)
        eval_set = list(data["eval"].select(range(EVAL_EXAMPLES)))
        before = evaluate_model(base_model, tokenizer, TASK, eval_set)
        config = TrainConfig(model=MODEL, task=TASK, method="full", steps=FINETUNE_STEPS, batch_size=BATCH_SIZE,
                             seq_len=SEQ_LEN, lr=LR, schedule="constant", warmup_steps=0, eval_examples=EVAL_EXAMPLES,
                             train_examples=TRAIN_EXAMPLES, precision=LAB.precision, seed=SEED)
        run = train(config, base=(base_model, tokenizer), store=STORE, progress=PROGRESS)
        print("status:", run["status"])
        scores = ("loss", "exact_match", "exact_match_no_values", "execution_accuracy")
        display(table([{"": "before", **{k: before.get(k) for k in scores}},
                       {"": "after", **{k: run["eval"].get(k) for k in scores}}]))
        record("finetune_status", run["status"])
        record("eval_loss_before", before["loss"])
        record("eval_loss_after", run["eval"]["loss"])
        """),
        code('takeaway("Fine-tuning reuses everything pretraining learned and only has to move the answer-token loss on the task.")'),
        md("""
        ### What pretraining gives that fine-tuning uses: copying

        Evaluation questions name values (a city, an artist) that never occur in training, so the
        model has to *copy* them from the question into the query. Transformers copy with an
        **induction circuit** (Olsson et al., 2022): a *previous-token head* writes "the token
        before me was A" into every position; an *induction head*, at a new A, attends to the
        position whose previous token was A and copies what it finds there. Real models grow
        the pair after hundreds of millions of tokens of pretraining; `tiny`'s 1.5 minutes see a
        few hundred thousand, and gradient descent alone does not find it. So labkit writes the
        circuit into `tiny`'s *initial* weights (`labkit.models.circuits`, read it) and half of
        the pretraining windows repeat a span, so keeping the circuit pays.

        The probe below feeds runs of random tokens twice: a model that can copy predicts the
        second run far better than the first (ratio well below 1). The head maps show *which*
        heads do it: a bright cell at layer 0, head 0 is the previous-token head, at layer 1,
        head 0 the induction head. Random weights have neither.
        """),
        code("""
        from labkit.models.circuits import head_scores, plant_induction_circuit
        from labkit.models.probes import copy_losses
        from labkit.notebook import head_maps
        torch.manual_seed(SEED)
        random_init = LlamaForCausalLM(tiny_config()).eval()
        torch.manual_seed(SEED)
        planted = LlamaForCausalLM(tiny_config()).eval()
        plant_induction_circuit(planted)
        bases = {"random weights": random_init, "tiny, planted (before pretraining)": planted, "tiny (pretrained)": base}
        head_maps({name: head_scores(m) for name, m in bases.items()}).show()
        probes = {name: copy_losses(m, base_tok) for name, m in bases.items()}
        if MODEL != "tiny":
            probes[MODEL] = copy_losses(base_model, tokenizer)
        display(table([{"model": name, **p} for name, p in probes.items()]))
        record("copy_ratio_random_init", probes["random weights"]["ratio"])
        record("copy_ratio_tiny", probes["tiny (pretrained)"]["ratio"])
        record("copy_ratio", probes.get(MODEL, probes["tiny (pretrained)"])["ratio"])
        """),
        md("""
        The fine-tuning table above shows what copying buys. `exact_match_no_values` (the query
        is right up to its string values, Spider's "exact match without values") counts the right
        *query*; execution accuracy also needs the right *name*. Measured on 40 held-out
        questions (`python benchmarks/copy_probe.py --controls --finetune`): fine-tuned `tiny`
        0.22–0.30 by execution; a `tiny` pretrained without the planted circuit writes the right
        query with an invented name and scores 0; SmolLM2-135M (its own induction heads, ratio
        about 0.25) about 0.4 after 40 LoRA steps.
        """),
        md("""
        ## 6 · Trainer API vs your own loop

        The same steps three ways: a dozen-line loop (`labkit.notebook.own_loop`, read it), the
        Hugging Face `Trainer`, and labkit's engine. Same data, same learning rate, constant
        schedule: the curves should nearly coincide (batches are shuffled differently).
        """),
        code("""
        from transformers import Trainer, TrainingArguments
        from labkit.home import cache_dir
        from labkit.notebook import own_loop

        train_records = list(data["train"])[:TRAIN_EXAMPLES]
        own = own_loop(load_model(MODEL), tokenizer, train_records, steps=FINETUNE_STEPS, batch_size=BATCH_SIZE,
                       lr=LR, seq_len=SEQ_LEN, seed=SEED)
        args = TrainingArguments(output_dir=str(cache_dir("labs", "00_trainer")), per_device_train_batch_size=BATCH_SIZE,
                                 max_steps=FINETUNE_STEPS, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
                                 weight_decay=0.0, logging_steps=1, report_to=[], save_strategy="no", seed=SEED,
                                 use_cpu=LAB.device == "cpu", disable_tqdm=True, remove_unused_columns=False)
        trainer = Trainer(model=load_model(MODEL), args=args,
                          train_dataset=tokenize_for_training(tokenizer, train_records, SEQ_LEN),
                          data_collator=lambda f: collate(f, tokenizer.pad_token_id))
        trainer.train()
        hf = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        curves({"own loop": own, "HF Trainer": hf, "labkit.train": run["losses"]}, title="Same fine-tune, three loops").show()
        record("own_loop_last_loss", own[-1])
        record("trainer_last_loss", hf[-1])
        """),
        code('takeaway("The Trainer is the same loop plus logging, checkpoints and devices; writing it yourself once shows there is no magic.")'),
        md("""
        ## Try this

        - Set `LR = 1e-3` and rerun sections 5–6: what happens to the curves?
        - Fine-tune `tiny` for 200 steps (`FINETUNE_STEPS = 200`, `MODEL = "tiny"`) and compare exact match with execution accuracy.
        - Korean labels: `LANGUAGE = "ko"`; the glossary: `from labkit.glossary import show_glossary; show_glossary("training")`.
        """),
    ]
    return cells


# =============================================================================================
# 01 · Memory
# =============================================================================================
def lab01() -> list:
    cells = head(
        "01",
        "Memory",
        [
            "Break a training step's memory into weights, gradients, optimizer state and activations (the memory panel).",
            "Estimate, then measure the same setup, and read the difference.",
            "See an out-of-memory error coming, and what to change.",
            "Batch size vs gradient accumulation: same effective batch, measured memory and time.",
            "Gradient checkpointing: memory saved, time paid. ZeRO stages over N GPUs.",
        ],
        '''
        BATCH_SIZES: list | None = None  # micro-batches for batch vs accumulation (effective batch = max); None: [2, 8] / [1, 2, 4, 8]
        SEQ_LEN: int | None = None  # None: 64 in smoke mode, 256 otherwise (the panel offers 64, 128, 256, ...)
        GPUS = 8  # for the ZeRO estimate
        ''',
        """
        SEQ_LEN = pick(SEQ_LEN, smoke=64, full=256)
        BATCH_SIZES = pick(BATCH_SIZES, smoke=[2, 8], full=[1, 2, 4, 8])
        EFFECTIVE_BATCH = max(BATCH_SIZES)
        DEVICE = "cuda" if LAB.device == "cuda" else "cpu"
        """,
    )
    cells += [
        md("""
        ## 1 · The memory panel

        Pick a model, method (full / LoRA / QLoRA), precision, optimizer, batch and sequence
        length: the panel estimates weights, gradients, optimizer state and activations, says
        whether the step fits the chosen GPU, and lists the cheapest fixes. **Measure** runs the
        same setup here for three real optimizer steps and draws the measured bars beside the
        estimate.
        """),
        code("""
        from labkit.memory.estimate import estimate
        from labkit.memory.measure import measure
        from labkit.memory.setup import MemorySetup
        from labkit.panels.memory import MemoryPanel

        panel = MemoryPanel(MODEL, setup=MemorySetup(method="full", precision="fp32", batch=2, seq=SEQ_LEN, device=DEVICE))
        measured = panel.run_measure()
        panel
        """),
        md("""
        ## 2 · Estimate vs measure

        The estimate is arithmetic over the architecture (bytes per parameter, per saved
        activation); the measurement counts real tensors (saved-tensor hooks for activations;
        on CUDA also `torch.cuda.max_memory_allocated`). Where they differ, the formula missed
        something — read the component that differs.
        """),
        code("""
        setup_ = panel.setup(device=DEVICE)
        est = estimate(MODEL, setup_)
        display(table([{"component": k, "estimate MiB": est.bytes[k] / 2**20, "measured MiB": measured.bytes[k] / 2**20}
                       for k in measured.bytes if est.bytes[k] or measured.bytes[k]]
                      + [{"component": "peak", "estimate MiB": est.peak / 2**20, "measured MiB": measured.peak / 2**20}]))
        record("estimate_over_measured_peak", est.peak / measured.peak)
        """),
        md("""
        ## 3 · Out of memory: see it coming

        An OOM is the step needing more than the device has, at its peak moment. The estimator
        answers for any GPU without owning one: full fine-tuning of SmolLM2-135M at batch 16 ×
        2048 tokens on a 16 GB card, and the cheapest changes that make it fit.
        """),
        code("""
        from labkit.memory.advice import fixes, greedy_plan
        big = MemorySetup(method="full", precision="amp-bf16", batch=16, seq=2048, device="cuda")
        need = estimate("smollm2-135m", big)
        print(f"needs {need.total / 2**30:.1f} GiB; a 16 GB GPU has {16e9 / 2**30:.1f} GiB → "
              f"{'fits' if need.total < 16e9 else 'OUT OF MEMORY'}")
        options = fixes("smollm2-135m", big, int(16e9))
        display(table([{"one change": f.label, "total GiB": f.total / 2**30, "fits": f.fits} for f in options[:6]]))
        plan = greedy_plan("smollm2-135m", big, int(16e9))  # cheapest changes, one after another, until it fits
        display(table([{"step": i + 1, "change": f.label, "total GiB": f.total / 2**30, "fits": f.fits}
                       for i, f in enumerate(plan)]))
        record("oom_plan_fits", bool(plan and plan[-1].fits))
        """),
        md("""
        ## 3 · Batch size vs gradient accumulation

        Gradient accumulation sums gradients over several micro-batches before one update: the
        *effective* batch stays `EFFECTIVE_BATCH`, activations shrink with the micro-batch, and
        time grows with the number of forward/backward passes.
        """),
        code("""
        import time
        rows = []
        for b in BATCH_SIZES:
            s = MemorySetup(method="full", batch=b, grad_accum=EFFECTIVE_BATCH // b, seq=SEQ_LEN, device=DEVICE)
            t0 = time.perf_counter()
            m = measure(MODEL, s, check_fits=False)
            rows.append({"micro-batch": b, "accumulation": EFFECTIVE_BATCH // b, "peak MiB": m.peak / 2**20,
                         "activations MiB": m.bytes["activations"] / 2**20, "seconds (3 steps)": time.perf_counter() - t0})
        display(table(rows))
        record("accum_peak_ratio", rows[0]["peak MiB"] / rows[-1]["peak MiB"])
        """),
        code('takeaway("Same effective batch, less memory: accumulation trades activation memory for more (smaller) passes.")'),
        md("""
        ## 4 · Gradient checkpointing

        Keep only each layer's input during the forward pass and recompute the rest during the
        backward pass: activation memory falls, the step takes about one extra forward.
        """),
        code("""
        rows = []
        for ckpt in (False, True):
            t0 = time.perf_counter()
            m = measure(MODEL, MemorySetup(method="full", batch=EFFECTIVE_BATCH, seq=SEQ_LEN, checkpointing=ckpt,
                                           device=DEVICE), check_fits=False)
            rows.append({"checkpointing": ckpt, "activations MiB": m.bytes["activations"] / 2**20,
                         "peak MiB": m.peak / 2**20, "seconds (3 steps)": time.perf_counter() - t0})
        display(table(rows))
        record("checkpointing_activation_ratio", rows[1]["activations MiB"] / rows[0]["activations MiB"])
        """),
        md("""
        ## 5 · ZeRO stages over N GPUs

        ZeRO shards optimizer state (stage 1), then gradients (2), then the weights (3) over `GPUS`
        data-parallel devices. Model states per GPU for mixed-precision AdamW: 16·P (stage 0),
        4·P + 12·P/N (1), 2·P + 14·P/N (2), 16·P/N (3).
        """),
        code("""
        rows = []
        for zero in (0, 1, 2, 3):
            e = estimate(MODEL, MemorySetup(method="full", precision="amp-bf16", batch=1, seq=SEQ_LEN,
                                                       gpus=GPUS, zero=zero, device="cuda"))
            rows.append({"ZeRO stage": zero, **{k: e.bytes[k] / 2**20 for k in ("weights", "gradients", "optimizer")},
                         "peak MiB": e.peak / 2**20})
        display(table(rows))
        record("zero3_over_zero0", rows[3]["peak MiB"] / rows[0]["peak MiB"])
        """),
        md("""
        ## Try this

        - In the panel: switch to LoRA, then QLoRA — which component shrinks most?
        - Find the largest batch that fits a 16 GiB GPU for SmolLM2 at seq 1024 (the panel's OOM line).
        - `GPUS = 2` vs `GPUS = 64`: when does ZeRO-3 stop paying?
        """),
    ]
    return cells


# =============================================================================================
# 02 · Precision
# =============================================================================================
def lab02() -> list:
    cells = head(
        "02",
        "Precision",
        [
            "Read fp32, fp16, bf16 and fp8 bit by bit in the format explorer: range vs precision.",
            "Train the same fine-tune in fp32, fp16 and bf16 (mixed and pure) and compare loss, time and memory.",
            "See fp16 gradients underflow and loss scaling bring them back.",
        ],
        '''
        VALUE = 0.1  # the number the format explorer starts with
        STEPS: int | None = None  # None: 6 in smoke mode, 40 otherwise
        PRECISIONS = ["fp32", "amp-fp16", "amp-fp16-scaled", "amp-bf16", "bf16"]
        LOSS_MULTIPLIER: float | None = None  # shrinks the loss so fp16 gradients underflow; None: labkit's measured value
        ''',
        """
        STEPS = pick(STEPS, smoke=6, full=40)
        from labkit.precision.mixed import UNDERFLOW_MULTIPLIER
        LOSS_MULTIPLIER = LOSS_MULTIPLIER if LOSS_MULTIPLIER is not None else UNDERFLOW_MULTIPLIER
        """,
    )
    cells += [
        store_cell(),
        md("""
        ## 1 · The format explorer

        A float is sign · 2^exponent · 1.mantissa. **Exponent bits set the range** (fp16 overflows
        above 65,504; bf16 reaches ~3·10^38 like fp32), **mantissa bits set the precision** (fp16
        keeps ~3 decimal digits, bf16 ~2). Type a value, or move the slider.
        """),
        code("""
        from labkit.panels.precision import FormatExplorer
        from labkit.precision import round_value
        explorer = FormatExplorer(VALUE)
        display(explorer)
        for fmt in ("fp16", "bf16", "fp8_e4m3fn"):
            record(f"{VALUE} in {fmt}", round_value(VALUE, fmt))
        """),
        code('takeaway("bf16 trades precision for fp32\'s range; fp16 is more precise but overflows at 65,504 and underflows below 6e-8.")'),
        md("""
        **Try this:** `65519` and `65520` in fp16; `257` in bf16; `500` in fp8 e4m3fn.

        ## 2 · Mixed-precision training, compared

        The same fine-tune of `tiny`, once per precision policy: `fp32`; **mixed precision**
        (`amp-*`: fp32 master weights, fp16/bf16 compute); **pure** 16-bit (`bf16`: weights, gradients
        and optimizer state in bf16). `LOSS_MULTIPLIER` scales the loss down so that fp16
        gradients fall below fp16's smallest number — as tiny gradients do in real models.
        """),
        code("""
        from labkit.panels.precision import TrainingComparisonPanel
        from labkit.precision.mixed import demo_config
        SIZES = dict(batch_size=4, seq_len=64) if SMOKE else {}  # fp16 matmuls are slow on CPU: keep smoke runs small
        comparison = TrainingComparisonPanel(config=demo_config(steps=STEPS, loss_multiplier=LOSS_MULTIPLIER, seed=SEED, **SIZES),
                                             steps=STEPS, loss_multiplier=LOSS_MULTIPLIER, store=STORE)
        for name, box in comparison.boxes.items():
            box.value = name in PRECISIONS
        result = comparison.run()
        comparison
        """),
        code("""
        rows = {r["precision"]: r for r in result["table"]}
        display(table(result["table"]))
        for p in rows:
            record(f"final_loss[{p}]", rows[p]["final_loss"])
        """),
        md("""
        ## 3 · Loss scaling

        Without scaling (`amp-fp16`) the shrunken gradients round to zero in fp16 and the loss
        stalls. `GradScaler` multiplies the loss by 2^16 before backward (the gradients land back
        inside fp16's range), divides them again before the update, skips a step whose gradients
        overflowed, and halves the scale when that happens.
        """),
        code('takeaway("fp16 needs loss scaling; bf16 does not (fp32\'s range) — that is why bf16 is the default where the GPU supports it.")'),
        md("""
        ## Try this

        - Set `LOSS_MULTIPLIER = 1.0`: does plain fp16 still fail?
        - Add `"fp16"` (pure fp16 weights) to `PRECISIONS`: what does a tiny update do to fp16 weights?
        - `LANGUAGE = "ko"` and rebuild the explorer.
        """),
    ]
    return cells


# =============================================================================================
# 03 · Quantization and QLoRA
# =============================================================================================
def lab03() -> list:
    cells = head(
        "03",
        "Quantization and QLoRA",
        [
            "Quantize a weight tensor live: method, bits, block size, outliers (the quantization playground).",
            "NF4 and double quantization: bits per parameter, error per value.",
            "PTQ vs QAT at a bit-width where the gap shows.",
            "Load a model in 8-bit and 4-bit; fine-tune it with QLoRA.",
            "Paged optimizers and their time cost.",
        ],
        '''
        QAT_BITS = 2  # int4 PTQ is already nearly lossless on a small model; the gap shows at 2 bits
        STEPS: int | None = None  # None: 4 in smoke mode, 60 otherwise
        EVAL_EXAMPLES: int | None = None  # None: 4 / 40
        ''',
        """
        STEPS = pick(STEPS, smoke=4, full=60)
        EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, full=40)
        """,
    )
    cells += [
        store_cell(),
        md("""
        ## 1 · The quantization playground

        **Quantization** stores each weight in a few bits plus a scale per block: `absmax`
        divides a block of 64 weights by its largest absolute value and rounds onto a grid.
        One outlier stretches its block's scale and crushes every other value in the block.
        """),
        code("""
        from labkit.panels.quant import QuantPlayground
        playground = QuantPlayground(method="nf4")
        playground
        """),
        md("""
        ## 2 · NF4 and double quantization

        **NF4** puts its 16 levels at the quantiles of a normal distribution — where the
        weights are. **Double quantization** quantizes the per-block scales as well:
        4 + 32/64 = 4.5 bits per weight becomes ≈ 4.127.
        """),
        code("""
        import torch
        from labkit.quant import error_metrics, nominal_bits_per_param, quantize
        w = torch.randn(64 * 1024, generator=torch.Generator().manual_seed(SEED)) * 0.02
        rows = []
        for method, dq in (("absmax", False), ("fp4", False), ("nf4", False), ("nf4", True)):
            q = quantize(w, method, bits=4, blocksize=64, double_quant=dq)
            rows.append({"method": method + (" + DQ" if dq else ""), "bits/param": nominal_bits_per_param(4, 64, dq),
                         **{k: v for k, v in error_metrics(w, q.dequantized).items() if k in ("mse", "max_abs_error", "snr_db")}})
        display(table(rows))
        record("nf4_dq_bits", nominal_bits_per_param(4, 64, True))
        record("nf4_mse_over_absmax", rows[2]["mse"] / rows[0]["mse"])
        """),
        code('takeaway("NF4 fits normally distributed weights better than a uniform 4-bit grid, and double quantization saves ~0.37 bit per weight almost for free.")'),
        md("""
        ## 3 · PTQ vs QAT

        **PTQ** quantizes a trained model as is. **QAT** fine-tunes with fake quantization in the
        forward pass so the weights settle where the grid is. To be fair, PTQ gets the same extra
        training steps (in full precision) before it is quantized.
        """),
        code("""
        from labkit.models import load_model, load_tokenizer
        from labkit.quant.ptq import eval_loss, quantized_copy
        from labkit.quant.qat import convert_qat, qat_preparer
        from labkit.tasks import load_task
        tok = load_tokenizer(MODEL)
        eval_set = list(load_task("text2sql", seed=SEED)["eval"].select(range(EVAL_EXAMPLES)))
        cfg = TrainConfig(model=MODEL, method="full", steps=STEPS, batch_size=4, seq_len=128, eval_examples=0,
                          precision=LAB.precision, seed=SEED)
        _, ptq_base = train(cfg, progress=PROGRESS, return_model=True)
        ptq_model, _ = quantized_copy(ptq_base, "absmax", bits=QAT_BITS, blocksize=64)
        _, qat_model = train(cfg, progress=PROGRESS, return_model=True, prepare=qat_preparer(bits=QAT_BITS, method="absmax"))
        qat_model = convert_qat(qat_model)
        rows = [{"model": "trained, full precision", "eval loss": eval_loss(ptq_base, tok, eval_set)},
                {"model": f"PTQ int{QAT_BITS}", "eval loss": eval_loss(ptq_model, tok, eval_set)},
                {"model": f"QAT int{QAT_BITS}", "eval loss": eval_loss(qat_model, tok, eval_set)}]
        display(table(rows))
        record("ptq_eval_loss", rows[1]["eval loss"])
        record("qat_eval_loss", rows[2]["eval loss"])
        """),
        md("""
        ## 4 · Loading in 8-bit and 4-bit, and QLoRA

        bitsandbytes quantizes the linear layers at load time (embeddings and the LM head stay
        in 16/32-bit). **QLoRA** freezes the 4-bit NF4 base and trains LoRA adapters in higher
        precision on top of it.
        """),
        code("""
        rows = []
        for name, quant in (("fp32", None),
                            ("8-bit", {"load_in_8bit": True}),
                            ("4-bit NF4 + DQ", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": torch.float32})):
            m = load_model(MODEL, quantization=quant)
            rows.append({"load": name, "footprint MiB": m.get_memory_footprint() / 2**20})
            del m
        display(table(rows))
        record("footprint_4bit_over_fp32", rows[2]["footprint MiB"] / rows[0]["footprint MiB"])
        """),
        code("""
        qlora = train(TrainConfig(model=MODEL, method="qlora", rank=8, steps=STEPS, batch_size=4, seq_len=128,
                                  eval_examples=EVAL_EXAMPLES, precision=LAB.precision, seed=SEED), store=STORE, progress=PROGRESS)
        lora = train(TrainConfig(model=MODEL, method="lora", rank=8, steps=STEPS, batch_size=4, seq_len=128,
                                 eval_examples=EVAL_EXAMPLES, precision=LAB.precision, seed=SEED), store=STORE, progress=PROGRESS)
        curves({"LoRA (fp32 base)": lora["losses"], "QLoRA (NF4 base)": qlora["losses"]}, title="LoRA vs QLoRA").show()
        record("qlora_status", qlora["status"])
        record("qlora_last_loss", qlora["losses"][-1] if qlora["losses"] else None)
        """),
        md("""
        ## 5 · Paged optimizers and their time cost

        A paged optimizer keeps its state in unified memory that the driver can move to CPU RAM
        when the GPU runs short: no OOM on a memory spike, but page traffic costs time. Without
        CUDA there is nothing to page, so this comparison is only meaningful on a GPU.
        """),
        code("""
        rows = []
        for opt in ("adamw", "adamw8bit", "paged-adamw8bit"):
            r = train(TrainConfig(model=MODEL, method="qlora", rank=8, steps=STEPS, batch_size=4, seq_len=128,
                                  optimizer=opt, eval_examples=0, precision=LAB.precision, seed=SEED), store=STORE, progress=PROGRESS)
            rows.append({"optimizer": opt, "status": r["status"], "tokens/s": r.get("tokens_per_s"),
                         "peak MiB": (r.get("peak_memory_bytes") or 0) / 2**20, "error": r.get("error", "")[:80]})
        display(table(rows))
        record("optimizers_ok", sum(r["status"] == "ok" for r in rows))
        """),
        md("""
        ## Try this

        - In the playground: `absmax`, 4 bits, per-tensor scale, outlier 100 — then block size 64.
        - `QAT_BITS = 4`: does QAT still beat PTQ?
        - On a GPU: raise the batch until plain AdamW runs out of memory, then try `paged-adamw8bit`.
        """),
    ]
    return cells


# =============================================================================================
# 04 · LoRA
# =============================================================================================
def lab04() -> list:
    cells = head(
        "04",
        "LoRA",
        [
            "Write LoRA's math (W + (α/r)·B·A) and check it against peft.",
            "Sweep the rank: trainable parameters, loss, accuracy, adapter size, against full fine-tuning.",
            "α and rsLoRA: why a fixed α/r confounds a rank sweep.",
            "Choose target modules; compare merged and separate (attached) serving.",
        ],
        '''
        RANKS = [2, 8, 32]
        STEPS: int | None = None  # None: 4 in smoke mode, 60 otherwise
        ALPHA_POLICIES = ["fixed", "rslora"]  # compared with the sweep's α = 2r
        FULL_FINETUNE = True  # add a full fine-tuning point to the sweep
        ''',
        """
        STEPS = pick(STEPS, smoke=4, full=60)
        SWEEP_OPTIONS = dict(precision=LAB.precision)  # bf16 autocast on a capable GPU, fp16 + scaling on a T4, fp32 on CPU
        if SMOKE:
            SWEEP_OPTIONS.update(batch_size=4, seq_len=128, eval_examples=4)
        """,
    )
    cells += [
        store_cell(),
        md("""
        ## 1 · The math, checked against peft

        LoRA freezes a weight `W` (d_out × d_in) and learns `ΔW = B·A` with `A` (r × d_in) and `B`
        (d_out × r), scaled by `α/r` (`α/√r` with rsLoRA). `B` starts at zero, so training starts
        exactly at the base model. labkit's `LoRALinear` is that formula in a few lines; here it
        gets the same `A` and `B` as peft's layer and must give the same outputs.
        """),
        code("""
        import copy, torch
        from peft import LoraConfig, get_peft_model
        from labkit.lora import apply_lora, lora_modules
        from labkit.models import load_model

        base = load_model(MODEL)
        ours = apply_lora(copy.deepcopy(base), "attention", r=8, alpha=16)
        theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        torch.manual_seed(SEED)
        for name, module in lora_modules(ours).items():
            peft_layer = theirs.get_submodule("base_model.model." + name)
            module.lora_B.data.normal_(0, 0.02)
            peft_layer.lora_A["default"].weight.data.copy_(module.lora_A.data)
            peft_layer.lora_B["default"].weight.data.copy_(module.lora_B.data)
        ids = torch.randint(0, base.config.vocab_size, (2, 16))
        with torch.no_grad():
            diff = (ours(ids).logits - theirs(ids).logits).abs().max().item()
        with torch.no_grad():
            effect = (ours(ids).logits - base(ids).logits).abs().max().item()
        print(f"max |ours - peft| = {diff:.2e}  (the adapter itself moves the logits by up to {effect:.2e})")
        record("lora_vs_peft_max_diff", diff)
        record("lora_effect_on_logits", effect)
        """),
        md("""
        ## 2 · The LoRA panel: rank sweep

        The slider shows the parameter formula r·(d_in + d_out) per target module; the sweep
        trains one adapter per rank (plus full fine-tuning) and plots loss, accuracy, trainable
        parameters and adapter size against rank.
        """),
        code("""
        from labkit.panels.lora import LoRAPanel
        panel = LoRAPanel(MODEL, "text2sql", store=STORE if STORE is not None else False, sweep_options=SWEEP_OPTIONS)
        panel.ranks_text.value = ",".join(str(r) for r in RANKS)
        panel.steps.value = STEPS
        panel.full.value = FULL_FINETUNE
        sweep = panel.run_sweep()
        panel
        """),
        code("""
        display(table(panel.rows()))
        record("sweep_points", len(sweep["points"]))
        record("sweep_ok", sum(p["status"] == "ok" for p in sweep["points"]))
        """),
        code('takeaway("Trainable parameters grow linearly with r, but the loss barely moves past a small rank: most of the task fits in a low-rank update.")'),
        md("""
        ## 3 · α and rsLoRA

        With `α/r` scaling and fixed α, doubling r halves each rank's contribution: high ranks
        learn slower and a rank sweep measures the scaling, not the capacity. α = 2r keeps α/r
        constant; rsLoRA uses α/√r.
        """),
        code("""
        from labkit.lora import run_sweep
        ends = sorted({min(RANKS), max(RANKS)})  # the smallest and the largest rank show the effect
        alpha = run_sweep(MODEL, "text2sql", ends, full=False, alpha_policies=ALPHA_POLICIES, steps=STEPS,
                          store=STORE if STORE is not None else False, progress=False, seed=SEED,
                          **{**SWEEP_OPTIONS, "eval_examples": 0})
        points = alpha["points"] + [p for p in sweep["points"] if p["method"] != "full" and p["rank"] in ends]
        series = {f"{p['config']['alpha_policy']} r={p['rank']}": p["losses"] for p in points}
        curves(series, title="Loss by rank and α policy").show()
        record("alpha_points", len(alpha["points"]))
        """),
        md("""
        ## 4 · Target modules, and merged vs separate serving

        Attention only (q, k, v, o) or every linear layer (+ MLP gate/up/down): more targets,
        more parameters, usually a bit more quality. For serving, an adapter can be **merged**
        into W (zero extra latency, one model per task) or kept **separate** (one base, many
        small adapters swapped per request, a little extra compute per token).
        """),
        code("""
        from labkit.lora import lora_parameter_count
        from labkit.models import load_config
        cfg = load_config(MODEL)
        display(table([{"targets": ts, "trainable": lora_parameter_count(cfg, 8, ts)["total"]}
                       for ts in ("attention", "attention+mlp")]))
        serving = panel.run_serving()
        display(table([{k: v for k, v in serving.items() if isinstance(v, (int, float, str))}]))
        """),
        md("""
        ## Try this

        - `RANKS = [1, 2, 4, 8, 16, 64]` with `STEPS = 200` (`labkit report labs/04_lora.ipynb -p RANKS "[1, 2, 4, 8, 16, 64]"`).
        - Tick the MLP modules in the panel and watch the formula.
        - Which rank gives the best accuracy per megabyte of adapter?
        """),
    ]
    return cells


# =============================================================================================
# 05 · Merging
# =============================================================================================
def lab05() -> list:
    cells = head(
        "05",
        "Merging",
        [
            "SLERP vs linear averaging: what stays on the sphere and why it matters.",
            "Task arithmetic, TIES and DARE on two fine-tunes of one base.",
            "Multi-task vs sequential fine-tuning: catastrophic forgetting, measured.",
            "Merging vs ensembling: accuracy and cost.",
        ],
        '''
        STEPS: int | None = None  # None: 6 in smoke mode, 80 otherwise
        EVAL_EXAMPLES: int | None = None  # None: 4 / 40
        ''',
        """
        STEPS = pick(STEPS, smoke=6, full=80)
        EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, full=40)
        """,
    )
    cells += [
        store_cell(),
        md("""
        ## 1 · SLERP vs averaging

        Averaging two unit vectors at angle θ gives a vector of length cos(θ/2): the midpoint
        sinks inside the sphere. SLERP walks along the sphere instead. Raw fine-tuned weights are
        nearly parallel (cos ≈ 0.9), so the two agree; task vectors are nearly orthogonal, where
        they differ.
        """),
        code("""
        import torch
        from labkit.merge import cosine, lerp, slerp
        a, b = torch.randn(1000), torch.randn(1000)
        a, b = a / a.norm(), b / b.norm()
        mid_linear, mid_slerp = lerp(a, b, 0.5), slerp(a, b, 0.5)
        print(f"cos(a, b) = {float(cosine(a, b)):.3f}; |linear midpoint| = {mid_linear.norm():.3f}; |SLERP midpoint| = {mid_slerp.norm():.3f}")
        record("linear_mid_norm", float(mid_linear.norm()))
        record("slerp_mid_norm", float(mid_slerp.norm()))
        """),
        md("""
        ## 2 · Two specialists from one base

        Fine-tune the same base twice: once on text2sql (task A), once on JSON extraction (task B).
        A merge combines their weights into one model that should do both.
        """),
        code("""
        from labkit.merge.experiment import TaskEvaluator, comparison_table, merge_path, train_specialists
        TRAIN = dict(precision=LAB.precision, **(dict(batch_size=4, seq_len=128, warmup_steps=1) if SMOKE else {}))
        spec = train_specialists(MODEL, "text2sql", "json_extract", method="full", steps=STEPS, seed=SEED,
                                 store=STORE, **TRAIN)
        evaluator = TaskEvaluator(spec.base_model, spec.tokenizer, "text2sql", "json_extract", n_eval=EVAL_EXAMPLES, seed=SEED)
        record("specialists_trained", sorted(spec.records))
        """),
        md("""
        ## 3 · The merge panel: linear, SLERP, task arithmetic, TIES, DARE

        Every method is evaluated along its path once (both tasks at every point); then moving
        `t`, λ or the density only redraws. **Task arithmetic** adds λ·(task vector A + task vector B)
        to the base; **TIES** trims small deltas, elects a sign per weight and keeps only the
        agreeing ones; **DARE** drops a random share of the deltas and rescales the rest.
        """),
        code("""
        from labkit.panels.merge import MergePanel
        grid = dict(ts=[0.0, 0.5, 1.0], lambdas=[0.5, 1.0], densities=(0.5,)) if SMOKE else {}
        path = merge_path(spec, evaluator, seed=SEED, **grid)
        panel = MergePanel(path)
        panel
        """),
        md("""
        ## 4 · Multi-task vs sequential fine-tuning; merging vs ensembling

        **Multi-task**: one run on A and B mixed. **Sequential**: A's model fine-tuned further on
        B — what it forgets of A is *catastrophic forgetting*, measured here, not assumed.
        An **ensemble** runs both specialists and averages their logits: often the best
        accuracy, at two forward passes per token; a merge costs one.
        """),
        code("""
        comparison = comparison_table(spec, evaluator, seed=SEED, cost_examples=2 if SMOKE else 8,
                                      cost_tokens=8 if SMOKE else 24)
        display(table([{"approach": name, **{k: r[k] for k in ("acc_a", "acc_b", "loss_a", "loss_b", "ms_per_token",
                                                              "forward_passes_per_token")}}
                       for name, r in comparison.rows.items()]))
        record("forgetting_acc_a", comparison.forgetting())
        record("ensemble_passes_per_token", comparison.rows["ensemble (logits)"]["forward_passes_per_token"])
        record("merge_passes_per_token", comparison.rows["TIES"]["forward_passes_per_token"])
        record("sequential_loss_a_minus_specialist", comparison.rows["sequential FT (A→B)"]["loss_a"] - comparison.rows["specialist A"]["loss_a"])
        """),
        code('takeaway("A merge serves two skills at the cost of one model; sequential fine-tuning forgets the first skill, and an ensemble pays twice per token.")'),
        md("""
        ## Try this

        - In the panel: SLERP vs linear at t = 0.5 — how far apart are the accuracy curves? (On
          raw weights, close: they are nearly parallel.)
        - TIES with density 0.3 vs 0.6; DARE with two seeds.
        - `STEPS = 200`: does forgetting grow with the second fine-tune's length?
        """),
    ]
    return cells


# =============================================================================================
# 06 · Learning rate and batch size
# =============================================================================================
def lab06() -> list:
    cells = head(
        "06",
        "Learning rate and batch size",
        [
            "See loss-curve volatility grow with the learning rate, up to divergence.",
            "Run an LR range test and read a good learning rate off it.",
            "Compare schedules with warmup (constant, linear, cosine).",
            "Batch size vs stability; gradient accumulation equivalence, measured.",
        ],
        '''
        LRS = [1e-4, 1e-3, 1e-2]  # full fine-tuning learning rates to compare
        RANGE_TEST_LRS: list | None = None  # None: [1e-4, 1e-2, 1e-1] in smoke mode, [1e-5 ... 1e-1] otherwise
        BATCH_SIZES: list | None = None  # None: [1, 8] / [1, 4, 16]
        STEPS: int | None = None  # None: 8 in smoke mode, 80 otherwise
        SEQ_LEN: int | None = None  # None: 96 / 160
        ''',
        """
        STEPS = pick(STEPS, smoke=8, full=80)
        SEQ_LEN = pick(SEQ_LEN, smoke=96, full=160)
        RANGE_TEST_LRS = pick(RANGE_TEST_LRS, smoke=[1e-4, 1e-2, 1e-1], full=[1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
        BATCH_SIZES = pick(BATCH_SIZES, smoke=[1, 8], full=[1, 4, 16])
        from labkit.notebook import volatility
        """,
    )
    cells += [
        store_cell(),
        code("""
        from labkit.models import load_model, load_tokenizer
        BASE = (load_model(MODEL), load_tokenizer(MODEL))  # loaded once; train() copies it per run

        def run(**changes):
            settings = dict(model=MODEL, method="full", steps=STEPS, batch_size=4, seq_len=SEQ_LEN, schedule="constant",
                            warmup_steps=0, eval_examples=0, precision=LAB.precision, seed=SEED)
            settings.update(changes)
            return train(TrainConfig(**settings), base=BASE, store=STORE, progress=PROGRESS)
        """),
        md("""
        ## 1 · Learning rate and volatility

        The **learning rate** sets the step size. Too small: the loss creeps down. Too large: each
        step overshoots, the curve jumps, and eventually diverges (NaN). Volatility here is the
        standard deviation of step-to-step loss changes.
        """),
        code("""
        runs = {lr: run(lr=lr) for lr in LRS}
        curves({f"lr={lr:g} ({r['status']})": r["losses"] for lr, r in runs.items()}, title="Loss vs learning rate").show()
        display(table([{"lr": lr, "status": r["status"], "last loss": r["losses"][-1] if r["losses"] else None,
                        "volatility": volatility(r["losses"])} for lr, r in runs.items()]))
        for lr, r in runs.items():
            record(f"volatility[lr={lr:g}]", volatility(r["losses"]))
        """),
        code('takeaway("Higher learning rates learn faster until the curve turns jumpy — volatility is the warning before divergence.")'),
        md("""
        ## 2 · An LR range test

        Short runs over a log grid of learning rates; plot the loss reached against the rate.
        Pick a rate a little below the bottom of the curve, well before it turns up.
        """),
        code("""
        test = {lr: run(lr=lr, steps=max(3, STEPS // 2)) for lr in RANGE_TEST_LRS}
        final = {lr: (r["losses"][-1] if r["status"] == "ok" and r["losses"] else None) for lr, r in test.items()}
        fig = curves({"loss after the short run": (list(final), list(final.values()))}, x_title="learning rate",
                     title="LR range test")
        fig.update_xaxes(type="log").show()
        best = min((v, lr) for lr, v in final.items() if v is not None)[1]
        print(f"lowest loss at lr={best:g}: start a bit below it")
        record("range_test_best_lr", best)
        """),
        md("""
        ## 3 · Schedules with warmup

        **Warmup** raises the LR from ~0 over the first steps (the optimizer's statistics are
        still poor then); afterwards it stays constant or decays linearly or along a cosine.
        """),
        code("""
        warm = max(1, STEPS // 4)
        sched = {s: run(lr=LRS[-1], schedule=s, warmup_steps=warm) for s in ("constant", "linear", "cosine")}
        curves({s: [st["lr"] for st in r["steps"]] for s, r in sched.items()}, y_title="learning rate",
               title=f"Schedules (warmup {warm} steps)").show()
        curves({s: r["losses"] for s, r in sched.items()}, title="Loss by schedule").show()
        record("schedules_ok", sum(r["status"] == "ok" for r in sched.values()))
        """),
        md("""
        ## 4 · Batch size vs stability

        A batch's gradient is an average over its examples: bigger batches, less noise per step.
        """),
        code("""
        by_batch = {b: run(lr=LRS[1], batch_size=b) for b in BATCH_SIZES}
        curves({f"batch {b}": r["losses"] for b, r in by_batch.items()}, title="Loss vs batch size").show()
        display(table([{"batch": b, "volatility": volatility(r["losses"]), "tokens/s": r.get("tokens_per_s")}
                       for b, r in by_batch.items()]))
        record("volatility_small_batch", volatility(by_batch[BATCH_SIZES[0]]["losses"]))
        record("volatility_large_batch", volatility(by_batch[BATCH_SIZES[-1]]["losses"]))
        """),
        md("""
        ## 5 · Gradient accumulation equivalence (measured)

        Batch 8 in one pass, 4 × 2 and 2 × 4 accumulated: the engine normalises the loss by the
        answer tokens of the whole effective batch, so the gradients — and the loss curves —
        should match up to floating-point rounding.
        """),
        code("""
        acc = {f"{8 // k} × {k}": run(lr=LRS[1], batch_size=8 // k, grad_accum=k) for k in (1, 2, 4)}
        curves({name: r["losses"] for name, r in acc.items()}, title="Same effective batch (8)").show()
        ref = acc["8 × 1"]["losses"]
        gap = max(abs(a - b) for r in acc.values() for a, b in zip(ref, r["losses"]))
        print(f"largest loss difference between the three: {gap:.2e}")
        record("accumulation_max_loss_gap", gap)
        """),
        code('takeaway("Gradient accumulation reproduces a large batch\'s training exactly; only memory and time differ.")'),
        md("""
        ## Try this

        - Add `1e-1` to `LRS`: where does it diverge?
        - Warmup 0 vs 10 at the highest learning rate.
        - Batch 1 with accumulation 16 vs batch 16: same curve, how much slower?
        """),
    ]
    return cells


# =============================================================================================
# 07 · Data and evaluation
# =============================================================================================
def lab07() -> list:
    cells = head(
        "07",
        "Data and evaluation",
        [
            "Read the instruction-dataset format and how a chat template turns it into tokens.",
            "Clean a dataset (noise, missing values, exact and near duplicates) and measure the effect on a fine-tune.",
            "Augment the train split only, with a guard against leaking eval data.",
            "Evaluate text2sql before vs after fine-tuning: exact match vs execution accuracy.",
            "RAG vs fine-tuning: information vs behaviour, on a small example.",
        ],
        '''
        NOISE_RATE = 0.3  # share of training records damaged before cleaning
        STEPS: int | None = None  # None: 6 in smoke mode, 80 otherwise
        TRAIN_RECORDS: int | None = None  # None: 64 / all
        EVAL_EXAMPLES: int | None = None  # None: 4 / 40
        LR = 1e-3
        ''',
        """
        STEPS = pick(STEPS, smoke=6, full=80)
        TRAIN_RECORDS = pick(TRAIN_RECORDS, smoke=64, full=None)
        EVAL_EXAMPLES = pick(EVAL_EXAMPLES, smoke=4, full=40)
        """,
    )
    cells += [
        store_cell(),
        md("""
        ## 1 · The instruction dataset format

        Each record: an `instruction` (what to do), an `input` (the question) and the `output`
        (the answer to learn), plus metadata. The chat template turns it into the conversation
        the model sees; only the answer counts in the loss.
        """),
        code("""
        from labkit.models import load_model, load_tokenizer
        from labkit.tasks import build_prompt, load_task
        data = load_task("text2sql", seed=SEED)
        tokenizer = load_tokenizer(MODEL)
        display(table([{k: r[k] for k in ("instruction", "input", "output")} for r in data["train"].select(range(3))]))
        print(build_prompt(tokenizer, data["train"][0]))
        record("train_records", len(data["train"]))
        record("eval_records", len(data["eval"]))
        """),
        md("""
        ## 2 · Cleaning, and its effect on a fine-tune

        Damage a copy of the training set (typos, corrupted answers, emptied fields, exact and
        near duplicates), clean it again, and fine-tune on each version. Near duplicates are
        found with MinHash signatures (checked against exact Jaccard similarity).
        """),
        code("""
        from labkit.data.cleaning import drop_missing, exact_dedup, inject_noise, near_dedup, summarize
        train_records = list(data["train"])
        if TRAIN_RECORDS is not None:
            train_records = train_records[:TRAIN_RECORDS]
        noisy, noise_report = inject_noise(train_records, NOISE_RATE, seed=SEED)
        step1, r1 = drop_missing(noisy)
        step2, r2 = exact_dedup(step1)
        cleaned, r3 = near_dedup(step2)
        for report, action in ((noise_report, "noise"), (r1, "missing"), (r2, "exact"), (r3, "near")):
            print(summarize(report, action))
        record("noisy_records", len(noisy))
        record("cleaned_records", len(cleaned))
        """),
        md("""
        Each version is saved as a JSONL file (one record per line, the format instruction
        datasets share) and trained by the same engine as every other run, with
        `TrainConfig(train_file=...)` (`labkit train --train-file` on the command line): the
        file's records replace the task's training split, the task's eval split still scores it.
        The run store keys the run by the file's *content*, so the noisy and the cleaned runs are
        told apart and each is reused when you run the lab again.
        """),
        code("""
        from labkit.data.records import write_records
        from labkit.home import cache_dir
        results = {}
        for name, records in (("noisy", noisy), ("cleaned", cleaned)):
            path = write_records(records, cache_dir("records") / f"lab07_{name}.jsonl")
            results[name] = train(TrainConfig(model=MODEL, method="full", train_file=str(path), steps=STEPS,
                                              batch_size=4, seq_len=160, lr=LR, warmup_steps=STEPS // 10,
                                              eval_examples=EVAL_EXAMPLES, precision=LAB.precision, seed=SEED),
                                  store=STORE, progress=PROGRESS)
        curves({k: v["losses"] for k, v in results.items()}, title="Fine-tuning on noisy vs cleaned data").show()
        display(table([{"data": k, "records": n, "status": v["status"], "eval loss": v["eval"].get("loss"),
                        "exact match": v["eval"].get("exact_match"),
                        "execution accuracy": v["eval"].get("execution_accuracy")}
                       for (k, v), n in zip(results.items(), (len(noisy), len(cleaned)))]))
        record("run_status_noisy", results["noisy"]["status"])
        record("run_status_cleaned", results["cleaned"]["status"])
        record("eval_loss_noisy", results["noisy"]["eval"].get("loss"))
        record("eval_loss_cleaned", results["cleaned"]["eval"].get("loss"))
        """),
        code('takeaway("Corrupted answers and duplicates teach the wrong thing or overweight a few examples; cleaning is cheap compared with the training it saves.")'),
        md("""
        ## 3 · Augmentation, train split only

        Paraphrased questions and swapped entity values add variety. Augment **only** the train
        split — and drop any augmented record that would put an eval question or entity into
        training (a leak makes the eval score meaningless).
        """),
        code("""
        from labkit.data.cleaning import augment_train_only
        augmented, aug_report = augment_train_only({"train": train_records, "eval": list(data["eval"])}, seed=SEED)
        print(summarize(aug_report, "augment"))
        record("augmented_added", aug_report["added"])
        record("augmentation_leaks_dropped", aug_report["dropped_leaks"])
        """),
        md("""
        ## 4 · text2sql before vs after: exact match vs execution accuracy

        **Exact match** compares the SQL text; **execution accuracy** runs both queries on the
        Chinook database and compares the rows. Two different queries can return the same
        rows, so execution accuracy ≥ exact match in practice, and it is the fairer score.
        **Exact match without values** compares the SQL with its string literals masked: the
        gap between it and execution accuracy is the entity values the model failed to copy.
        """),
        code("""
        from labkit.tasks import evaluate_model
        eval_set = list(data["eval"].select(range(EVAL_EXAMPLES)))
        base = load_model(MODEL)
        before = evaluate_model(base, tokenizer, "text2sql", eval_set, return_predictions=True)
        after_run = train(TrainConfig(model=MODEL, method="lora", rank=8, steps=STEPS, batch_size=4, seq_len=160,
                                      eval_examples=EVAL_EXAMPLES, train_examples=TRAIN_RECORDS, precision=LAB.precision,
                                      seed=SEED), base=(base, tokenizer),
                          store=STORE, progress=PROGRESS)
        after = after_run["eval"]
        display(table([{"": name, "exact match": m.get("exact_match"), "exact match without values": m.get("exact_match_no_values"),
                        "execution accuracy": m.get("execution_accuracy")} for name, m in (("before", before), ("after", after))]))
        print("a prediction before fine-tuning:", before["predictions"][0][:200])
        record("exec_acc_before", before["execution_accuracy"])
        record("exec_acc_after", after.get("execution_accuracy"))
        """),
        md("""
        ## 5 · RAG or fine-tuning? Information vs behaviour

        Fine-tuning changes **behaviour**: the output format, the style, the habit of answering
        with one SQLite query. It is a poor way to add **information** — facts change, and a
        model that memorised them cannot cite or update them. **RAG** retrieves the facts at
        question time and puts them in the prompt.

        text2sql is both at once, cleanly separated: the fine-tune learns to write queries
        (behaviour), and the database supplies the facts when the query runs (retrieval). Below,
        one eval question: the model's query, and the rows the database returns for it.
        """),
        code("""
        from labkit.data.chinook import chinook_db
        from labkit.tasks.sqlexec import run_sql
        example = eval_set[0]
        print("question:", example["input"])
        print("reference SQL:", example["output"])
        reference = run_sql(chinook_db(), example["output"])
        print("rows (the information, fetched at question time):", reference.rows[:5])
        guess = run_sql(chinook_db(), before["predictions"][0])
        print("the base model's query:", before["predictions"][0][:120], "→", guess.rows[:5] if guess.ok else f"error: {guess.error}")
        record("reference_query_runs", reference.ok)
        """),
        code('takeaway("Fine-tune for behaviour (format, style, task skill); retrieve for information (facts that change or must be cited).")'),
        md("""
        ## Try this

        - `NOISE_RATE = 0.6`: how much does cleaning recover?
        - Evaluate on the harder split: `load_task("text2sql", split="template")` (whole question templates held out).
        - Glossary of the data terms: `from labkit.glossary import show_glossary; show_glossary("data")`.
        """),
    ]
    return cells


GLOSSARY_TOPIC = {"00": "training", "01": "memory", "02": "precision", "03": "quantization", "04": "lora",
                  "05": "merging", "06": "optimization", "07": "data"}


def glossary_tail(name: str) -> list:
    topic = GLOSSARY_TOPIC[name[:2]]
    return [
        md("""
        ## Glossary · 용어집

        The terms of this lab in English and Korean (`show_glossary()` lists them all).
        """),
        code(f'from labkit.glossary import show_glossary\nshow_glossary("{topic}")'),
    ]


LABS = {
    "00_training_loop": lab00,
    "01_memory": lab01,
    "02_precision": lab02,
    "03_quantization": lab03,
    "04_lora": lab04,
    "05_merging": lab05,
    "06_lr_batch": lab06,
    "07_data_eval": lab07,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    nb.cells = LABS[name]() + glossary_tail(name)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"  # stable ids: regenerating gives identical files
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook differs from its source")
    parser.add_argument("names", nargs="*", help="labs to write (default: all)")
    args = parser.parse_args(argv)
    LABS_DIR.mkdir(exist_ok=True)
    stale = []
    for name in args.names or LABS:
        text = nbformat.writes(build(name)) + "\n"
        path = LABS_DIR / f"{name}.ipynb"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run python tools/make_labs.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
