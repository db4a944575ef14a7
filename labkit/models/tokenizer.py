"""A small byte-level BPE tokenizer for the ``tiny`` model, trained by labkit on its corpus.

Trained with Hugging Face ``tokenizers`` (the same algorithm as GPT-2/SmolLM2, just a 4k
vocabulary) and wrapped as a ``transformers.PreTrainedTokenizerFast`` with the ChatML chat
template SmolLM2 uses, so every lab code path treats ``tiny`` and a real model the same.

One deliberate difference from GPT-2, in how text is cut into words before BPE: GPT-2 glues a
word to the space before it, so "India" in a sentence and "India" inside SQL quotes are different
tokens (``ĠI·nd·ia`` vs ``Ind·ia``) and copying the name means re-spelling it. tiny keeps the
space apart before a capitalised word or a number, so a name is the same tokens wherever it
appears (measured: 2.6% more tokens on the corpus; every held-out text2sql value then tokenizes
the same in the question and in the query).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 4096
BOS_TOKEN = EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<pad>"
# Listed first to the trainer, so their ids are fixed: the tiny config can name them without
# building the tokenizer.
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END, PAD_TOKEN)
SPECIAL_IDS = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}

# GPT-2's word pattern, except that a capitalised word or a number never takes the space before it.
WORD_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d"
    r"|\p{Lu}\p{L}*"  # Capitalised (no leading space)
    r"| ?(?!\p{Lu})\p{L}+"  # other words, with their leading space
    r"|\p{N}+"  # numbers (no leading space)
    r"| ?[^\s\p{L}\p{N}]+"  # punctuation runs
    r"|\s+(?!\S)|\s+"
)

# ChatML, as in SmolLM2-Instruct, but with no default system prompt (tiny's context is short).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; deterministic for the same texts.

    Byte-level means every string is encodable (no unknown token): the 256 byte symbols are
    the initial alphabet and merges are learned on top.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size: must be at least {256 + len(SPECIAL_TOKENS) + 1}; got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    for token, idx in SPECIAL_IDS.items():
        assert tok.token_to_id(token) == idx, (token, tok.token_to_id(token))
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers wrapper: special tokens, pad token and the ChatML chat template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=512,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tokenizer(texts: Iterable[str], out_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train the tiny tokenizer and (optionally) ``save_pretrained`` it into ``out_dir``."""
    fast = train_tokenizer(texts)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast
