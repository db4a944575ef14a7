"""A Korean–English glossary of the fine-tuning terms the labs use.

Korean workshops mix Korean explanations with English terms (many are kept as loanwords, e.g.
"파인튜닝", "LoRA"); the glossary gives both, with a one-line definition in each language.

    from labkit.glossary import glossary_html, lookup
    glossary_html(topic="lora")   # an HTML table for a lab
    lookup("양자화")               # either language works
"""

from __future__ import annotations

import html
from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    """One glossary entry."""

    en: str
    ko: str
    definition_en: str
    definition_ko: str
    topic: str  # training | memory | precision | quantization | lora | merging | optimization | data


TOPICS = ("training", "memory", "precision", "quantization", "lora", "merging", "optimization", "data")

GLOSSARY: tuple[Term, ...] = (
    # --- training loop --------------------------------------------------------------------
    Term("pretraining", "사전학습", "Training a model from scratch on raw text by next-token prediction.",
         "대량의 원시 텍스트로 다음 토큰 예측을 학습시키는 처음 단계의 학습.", "training"),
    Term("fine-tuning", "미세조정 (파인튜닝)", "Continuing to train a pretrained model on task data so it behaves as wanted.",
         "사전학습된 모델을 과제 데이터로 추가 학습시켜 원하는 행동을 하도록 만드는 것.", "training"),
    Term("next-token prediction", "다음 토큰 예측", "The language-model objective: predict token t+1 from tokens up to t.",
         "t번째까지의 토큰으로 t+1번째 토큰을 예측하는 언어모델의 학습 목표.", "training"),
    Term("token", "토큰", "The unit a tokenizer cuts text into; the model sees ids of tokens.",
         "토크나이저가 텍스트를 자르는 단위. 모델은 토큰의 id를 입력으로 받는다.", "training"),
    Term("batch", "배치", "The examples processed together in one forward/backward pass.",
         "한 번의 순전파/역전파에서 함께 처리하는 예제 묶음.", "training"),
    Term("forward pass", "순전파", "Computing the model's outputs (and the loss) from the inputs.",
         "입력으로부터 모델 출력과 손실을 계산하는 과정.", "training"),
    Term("loss", "손실", "A number saying how wrong the predictions are; training makes it smaller.",
         "예측이 얼마나 틀렸는지 나타내는 값. 학습은 이 값을 줄인다.", "training"),
    Term("cross-entropy", "교차 엔트로피", "The loss for next-token prediction: −log of the probability of the right token.",
         "다음 토큰 예측의 손실: 정답 토큰 확률의 음의 로그.", "training"),
    Term("backward pass (backpropagation)", "역전파", "Computing the gradient of the loss with respect to every weight.",
         "손실의 각 가중치에 대한 기울기를 계산하는 과정.", "training"),
    Term("gradient", "기울기 (그래디언트)", "How the loss changes when a weight changes; the update direction.",
         "가중치가 변할 때 손실이 변하는 정도. 업데이트 방향을 정한다.", "training"),
    Term("optimizer", "옵티마이저", "The rule that turns gradients into weight updates (SGD, AdamW).",
         "기울기로 가중치를 어떻게 갱신할지 정하는 규칙 (SGD, AdamW).", "training"),
    Term("step", "스텝", "One optimizer update.", "옵티마이저의 가중치 갱신 한 번.", "training"),
    Term("epoch", "에폭", "One pass over the whole training set.", "학습 데이터 전체를 한 번 도는 것.", "training"),
    Term("inference", "추론", "Using a trained model to produce outputs; no gradients are kept.",
         "학습된 모델로 출력을 만드는 것. 기울기를 저장하지 않는다.", "training"),
    Term("overfitting", "과적합", "Fitting the training data so closely that held-out performance gets worse.",
         "학습 데이터에 지나치게 맞춰져 보지 않은 데이터에서 성능이 떨어지는 현상.", "training"),
    Term("catastrophic forgetting", "파국적 망각", "A fine-tune erasing what the model knew before (an earlier task or domain).",
         "미세조정이 모델이 이전에 알던 것(이전 과제·도메인)을 지워버리는 현상.", "training"),
    # --- memory ---------------------------------------------------------------------------
    Term("activations", "활성값 (액티베이션)", "Intermediate results saved in the forward pass for the backward pass.",
         "역전파를 위해 순전파 중 저장해 두는 중간 계산 결과.", "memory"),
    Term("optimizer state", "옵티마이저 상태", "What the optimizer keeps per weight (AdamW: two moments, 8 bytes in fp32).",
         "옵티마이저가 가중치마다 보관하는 값 (AdamW: 두 개의 모멘트, fp32로 8바이트).", "memory"),
    Term("out of memory (OOM)", "메모리 부족 (OOM)", "The device cannot allocate what the step needs.",
         "한 스텝에 필요한 메모리를 장치가 할당하지 못하는 상황.", "memory"),
    Term("gradient accumulation", "그래디언트 누적", "Summing gradients over several small batches before one update: a large effective batch in less memory.",
         "여러 작은 배치의 기울기를 더한 뒤 한 번 갱신: 적은 메모리로 큰 유효 배치를 얻는다.", "memory"),
    Term("effective batch size", "유효 배치 크기", "batch size × accumulation steps × number of GPUs.",
         "배치 크기 × 누적 스텝 수 × GPU 수.", "memory"),
    Term("gradient checkpointing", "그래디언트 체크포인팅", "Saving fewer activations and recomputing them in the backward pass: memory saved, time paid.",
         "활성값을 덜 저장하고 역전파 때 다시 계산: 메모리를 아끼고 시간을 더 쓴다.", "memory"),
    Term("ZeRO (stages 1–3)", "ZeRO (1–3단계)", "Sharding optimizer state (1), gradients (2) and weights (3) across GPUs.",
         "옵티마이저 상태(1), 기울기(2), 가중치(3)를 여러 GPU에 나눠 저장하는 방법.", "memory"),
    Term("peak memory", "최대 메모리 사용량", "The most memory in use at any moment of a step; what decides OOM.",
         "한 스텝 동안 가장 많이 쓴 순간의 메모리. OOM 여부를 결정한다.", "memory"),
    # --- precision ------------------------------------------------------------------------
    Term("floating-point format", "부동소수점 형식", "Sign, exponent and mantissa bits: exponent sets the range, mantissa the precision.",
         "부호·지수·가수 비트: 지수는 표현 범위, 가수는 정밀도를 정한다.", "precision"),
    Term("fp32 / fp16 / bf16", "fp32 / fp16 / bf16", "32-bit float; 16-bit with more precision but small range; 16-bit with fp32's range.",
         "32비트 실수; 정밀하지만 범위가 좁은 16비트; fp32와 같은 범위의 16비트.", "precision"),
    Term("mixed precision", "혼합 정밀도", "Computing in 16-bit while keeping fp32 master weights.",
         "fp32 마스터 가중치를 유지하면서 계산은 16비트로 하는 방법.", "precision"),
    Term("loss scaling", "손실 스케일링", "Multiplying the loss so small fp16 gradients do not underflow to zero, then dividing back.",
         "작은 fp16 기울기가 0으로 사라지지 않도록 손실을 곱했다가 다시 나누는 방법.", "precision"),
    Term("underflow / overflow", "언더플로 / 오버플로", "A value too small (becomes 0) or too large (becomes inf) for the format.",
         "형식이 표현하기에 너무 작아 0이 되거나, 너무 커서 inf가 되는 것.", "precision"),
    # --- quantization ---------------------------------------------------------------------
    Term("quantization", "양자화", "Storing weights with fewer bits (8, 4) plus scale factors.",
         "가중치를 더 적은 비트(8, 4)와 스케일 값으로 저장하는 것.", "quantization"),
    Term("NF4 (4-bit NormalFloat)", "NF4 (4비트 NormalFloat)", "QLoRA's 4-bit code with levels at quantiles of a normal distribution.",
         "정규분포의 분위수에 값을 둔 QLoRA의 4비트 형식.", "quantization"),
    Term("double quantization", "이중 양자화", "Quantizing the per-block scale factors too (≈4.127 instead of 4.5 bits per weight).",
         "블록별 스케일 값까지 양자화하는 것 (가중치당 4.5비트 → 약 4.127비트).", "quantization"),
    Term("block size / absmax", "블록 크기 / absmax", "Weights are quantized in blocks (64), each scaled by its largest absolute value.",
         "가중치를 블록(64개) 단위로, 블록의 최대 절댓값으로 나눠 양자화한다.", "quantization"),
    Term("PTQ (post-training quantization)", "학습 후 양자화 (PTQ)", "Quantizing a trained model without further training.",
         "학습이 끝난 모델을 추가 학습 없이 양자화하는 것.", "quantization"),
    Term("QAT (quantization-aware training)", "양자화 인식 학습 (QAT)", "Training with simulated quantization so the model adapts to it.",
         "양자화를 흉내 내며 학습해 모델이 양자화에 적응하게 하는 것.", "quantization"),
    Term("QLoRA", "QLoRA", "LoRA adapters trained on top of a frozen 4-bit (NF4) base model.",
         "4비트(NF4)로 고정된 기반 모델 위에서 LoRA 어댑터를 학습하는 방법.", "quantization"),
    Term("paged optimizer", "페이지드 옵티마이저", "Optimizer state in unified memory that can spill to CPU RAM, avoiding OOM spikes at a time cost.",
         "옵티마이저 상태를 통합 메모리에 두어 CPU RAM으로 넘길 수 있게 한 것. OOM을 피하는 대신 느려질 수 있다.", "quantization"),
    # --- LoRA -----------------------------------------------------------------------------
    Term("PEFT (parameter-efficient fine-tuning)", "파라미터 효율적 미세조정 (PEFT)", "Training a small number of added or selected parameters instead of all weights.",
         "전체 가중치 대신 소수의 추가·선택된 파라미터만 학습하는 방법.", "lora"),
    Term("LoRA (low-rank adaptation)", "LoRA (저랭크 적응)", "Freezing W and learning ΔW = B·A with small rank r.",
         "W는 고정하고 작은 랭크 r의 ΔW = B·A만 학습하는 방법.", "lora"),
    Term("rank (r)", "랭크 (r)", "The inner dimension of B·A; sets the adapter's size and capacity.",
         "B·A의 안쪽 차원. 어댑터의 크기와 표현력을 정한다.", "lora"),
    Term("alpha (α)", "알파 (α)", "LoRA's scale: the update is multiplied by α/r (α/√r with rsLoRA).",
         "LoRA의 스케일: 업데이트에 α/r(rsLoRA는 α/√r)을 곱한다.", "lora"),
    Term("rsLoRA", "rsLoRA", "Rank-stabilised LoRA: scale α/√r so higher ranks keep learning.",
         "랭크 안정화 LoRA: α/√r로 스케일해 높은 랭크에서도 학습이 느려지지 않게 한다.", "lora"),
    Term("target modules", "대상 모듈", "The layers that get adapters (q_proj, v_proj, … or all linear layers).",
         "어댑터를 붙이는 층 (q_proj, v_proj, … 또는 모든 선형층).", "lora"),
    Term("adapter", "어댑터", "The small trained weights added to a frozen base model.",
         "고정된 기반 모델에 더해지는 작은 학습 가중치.", "lora"),
    Term("merge (merge_and_unload)", "병합 (merge_and_unload)", "Adding B·A into W so serving needs no adapter code.",
         "B·A를 W에 더해 어댑터 없이 서빙할 수 있게 하는 것.", "lora"),
    Term("trainable parameters", "학습 가능한 파라미터", "Weights that receive gradients and optimizer state.",
         "기울기와 옵티마이저 상태를 갖는 가중치.", "lora"),
    # --- merging --------------------------------------------------------------------------
    Term("model merging", "모델 병합", "Combining the weights of several fine-tunes into one model.",
         "여러 미세조정 모델의 가중치를 하나의 모델로 합치는 것.", "merging"),
    Term("SLERP", "구면 선형 보간 (SLERP)", "Interpolating along the sphere between two weight vectors instead of a straight line.",
         "두 가중치 벡터 사이를 직선이 아닌 구면을 따라 보간하는 방법.", "merging"),
    Term("task vector", "태스크 벡터", "Fine-tuned weights minus base weights: what a task added.",
         "미세조정 가중치 − 기반 가중치: 과제가 더한 변화.", "merging"),
    Term("task arithmetic", "태스크 산술", "Adding (scaled) task vectors to the base model.",
         "(스케일한) 태스크 벡터들을 기반 모델에 더하는 병합.", "merging"),
    Term("TIES", "TIES", "Trim small deltas, elect a sign per weight, merge only agreeing deltas.",
         "작은 변화 제거, 가중치별 부호 선출, 부호가 같은 변화만 병합.", "merging"),
    Term("DARE", "DARE", "Randomly drop a fraction p of delta weights and rescale the rest by 1/(1−p).",
         "변화량의 p 비율을 무작위로 버리고 나머지를 1/(1−p)로 키우는 방법.", "merging"),
    Term("ensembling", "앙상블", "Running several models and combining their outputs (costs N× inference).",
         "여러 모델을 모두 실행해 출력을 합치는 것 (추론 비용 N배).", "merging"),
    # --- optimization ---------------------------------------------------------------------
    Term("learning rate", "학습률", "How big each update step is.", "각 업데이트 스텝의 크기.", "optimization"),
    Term("warmup", "워밍업", "Raising the learning rate from ~0 over the first steps to avoid early instability.",
         "초기 불안정을 피하려고 처음 몇 스텝 동안 학습률을 0 근처에서 올리는 것.", "optimization"),
    Term("learning-rate schedule", "학습률 스케줄", "How the learning rate changes over training (constant, linear, cosine).",
         "학습 중 학습률이 변하는 방식 (상수, 선형, 코사인).", "optimization"),
    Term("LR range test", "학습률 범위 테스트", "Raising the LR exponentially during a short run to find where loss drops fastest and where it diverges.",
         "짧은 학습 동안 학습률을 지수적으로 올려 손실이 가장 빨리 줄고 발산하는 지점을 찾는 방법.", "optimization"),
    Term("gradient clipping", "그래디언트 클리핑", "Capping the gradient norm to keep one bad batch from wrecking the weights.",
         "기울기 노름의 상한을 두어 나쁜 배치 하나가 가중치를 망치지 않게 하는 것.", "optimization"),
    Term("divergence", "발산", "The loss blowing up (often to NaN) because steps are too large.",
         "스텝이 너무 커서 손실이 폭증(종종 NaN)하는 현상.", "optimization"),
    # --- data and evaluation --------------------------------------------------------------
    Term("instruction dataset", "지시문 데이터셋", "Examples of (instruction, input, output) that teach a model to follow requests.",
         "(지시문, 입력, 출력) 예제로 요청을 따르도록 가르치는 데이터셋.", "data"),
    Term("chat template", "채팅 템플릿", "How messages and roles are written into one token sequence (ChatML: <|im_start|>…).",
         "메시지와 역할을 하나의 토큰 시퀀스로 쓰는 형식 (ChatML: <|im_start|>…).", "data"),
    Term("prompt masking", "프롬프트 마스킹", "Excluding prompt tokens from the loss (label −100) so only answers are learned.",
         "프롬프트 토큰을 손실에서 제외(label −100)해 답변만 학습하게 하는 것.", "data"),
    Term("data cleaning", "데이터 정제", "Removing noise, missing values and duplicates before training.",
         "학습 전에 잡음, 결측치, 중복을 제거하는 것.", "data"),
    Term("near-duplicate", "유사 중복", "Examples that differ only trivially (case, spacing, a word); they leak and overweight.",
         "대소문자·공백·단어 하나 정도만 다른 예제. 누수와 과대 가중을 일으킨다.", "data"),
    Term("data augmentation", "데이터 증강", "Making new training examples by varying existing ones (train split only).",
         "기존 예제를 변형해 새 학습 예제를 만드는 것 (학습 데이터에만 적용).", "data"),
    Term("train / eval split", "학습 / 평가 분할", "Data to learn from vs data held out to measure generalisation.",
         "학습에 쓰는 데이터와 일반화를 측정하려고 떼어 둔 데이터.", "data"),
    Term("exact match", "정확 일치", "The prediction equals the reference string exactly.",
         "예측이 정답 문자열과 완전히 같은지 보는 지표.", "data"),
    Term("execution accuracy", "실행 정확도", "For SQL: the predicted query returns the same rows as the reference.",
         "SQL에서 예측 쿼리의 실행 결과가 정답 쿼리의 결과와 같은지 보는 지표.", "data"),
    Term("text-to-SQL", "텍스트-SQL 변환 (text2sql)", "Turning a natural-language question into an SQL query.",
         "자연어 질문을 SQL 쿼리로 바꾸는 과제.", "data"),
    Term("RAG (retrieval-augmented generation)", "검색 증강 생성 (RAG)", "Retrieving documents at question time and putting them in the prompt: for new information.",
         "질문 시점에 문서를 검색해 프롬프트에 넣는 방법: 새로운 정보에 적합.", "data"),
)


def lookup(term: str) -> Term:
    """Find an entry by its English or Korean name (case-insensitive, partial match allowed)."""
    needle = term.strip().lower()
    if not needle:
        raise KeyError("empty glossary term")
    for entry in GLOSSARY:
        if needle in (entry.en.lower(), entry.ko.lower()):
            return entry
    for entry in GLOSSARY:
        if needle in entry.en.lower() or needle in entry.ko.lower():
            return entry
    raise KeyError(f"no glossary entry for {term!r}")


def terms(topic: str | None = None) -> list[Term]:
    """All entries, or those of one topic (see :data:`TOPICS`)."""
    if topic is not None and topic not in TOPICS:
        raise ValueError(f"topic must be one of {', '.join(TOPICS)}; got {topic!r}")
    return [t for t in GLOSSARY if topic is None or t.topic == topic]


def glossary_markdown(topic: str | None = None, *, definitions: str = "both") -> str:
    """The glossary as a markdown table; ``definitions`` is "en", "ko", "both" or "none"."""
    rows = terms(topic)
    head, sep = "| English | 한국어 |", "|---|---|"
    if definitions != "none":
        head += " Definition / 정의 |"
        sep += "---|"
    lines = [head, sep]
    for t in rows:
        line = f"| {t.en} | {t.ko} |"
        if definitions != "none":
            line += f" {_definition(t, definitions)} |"
        lines.append(line.replace("\n", " "))
    return "\n".join(lines)


def glossary_html(topic: str | None = None, *, definitions: str = "both") -> str:
    """The glossary as an HTML table (for a lab cell or a report)."""
    rows = terms(topic)
    cols = ["English", "한국어"] + ([] if definitions == "none" else ["Definition / 정의"])
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for t in rows:
        cells = [html.escape(t.en), html.escape(t.ko)]
        if definitions != "none":
            cells.append(html.escape(_definition(t, definitions)).replace("\n", "<br>"))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="labkit-glossary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def show_glossary(topic: str | None = None, *, definitions: str = "both"):  # noqa: ANN201 — IPython object
    """Display the glossary table in a notebook."""
    from IPython.display import HTML

    return HTML(glossary_html(topic, definitions=definitions))


def _definition(t: Term, which: str) -> str:
    if which == "en":
        return t.definition_en
    if which == "ko":
        return t.definition_ko
    if which == "both":
        return f"{t.definition_en}\n{t.definition_ko}"
    raise ValueError(f"definitions must be en, ko, both or none; got {which!r}")
