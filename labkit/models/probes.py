"""Can a model copy? The repeated-random-tokens probe for induction heads.

Random tokens are unpredictable, so the loss on a first run of them is about ln(vocab). Repeat
the run and a model with *induction heads* (attend to the earlier occurrence of the current token,
copy what came next) predicts the second copy almost perfectly; a model without them does no
better than on the first. Text-to-SQL on unseen entity values needs exactly this skill: the value
has to be copied from the question into the query.
"""

from __future__ import annotations

from typing import Any

import torch

from labkit.device import model_mode


@torch.no_grad()
def copy_losses(model: Any, tokenizer: Any, *, length: int = 20, sequences: int = 16, seed: int = 0) -> dict[str, float]:
    """Mean next-token loss on the first and second copy of random token runs, and their ratio.

    ``ratio`` (second / first) near 1: the model cannot copy; well below 1: it can.
    """
    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length: must be an integer >= 2; got {length!r}")
    if not isinstance(sequences, int) or sequences < 1:
        raise ValueError(f"sequences: must be an integer >= 1; got {sequences!r}")
    vocab = min(int(model.config.vocab_size), len(tokenizer))
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(vocab) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    run = allowed[torch.randint(0, len(allowed), (sequences, length), generator=gen)]
    ids = torch.cat([run, run], dim=1).to(next(model.parameters()).device)
    with model_mode(model, False):
        logits = model(input_ids=ids).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    first = nll[:, : length - 1].mean().item()
    second = nll[:, length - 1 :].mean().item()
    return {"first_copy_loss": first, "second_copy_loss": second, "ratio": second / first}
