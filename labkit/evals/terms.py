"""The terms of lab 09 in English and Korean."""

TERMS = [
    {"English": "log-likelihood scoring", "한국어": "로그 우도 채점",
     "Definition": "Score each choice by log p(choice | prompt); pick the highest."},
    {"English": "acc_norm", "한국어": "길이 정규화 정확도", "Definition": "acc after dividing each log-likelihood by the choice's length."},
    {"English": "perplexity", "한국어": "퍼플렉서티", "Definition": "exp(mean negative log-likelihood per token)."},
    {"English": "exact match", "한국어": "완전 일치", "Definition": "The generated text equals the reference string."},
    {"English": "LLM-as-judge", "한국어": "LLM 심사자", "Definition": "A language model grading answers against a rubric."},
    {"English": "position bias", "한국어": "위치 편향", "Definition": "A judge preferring whichever answer comes first (or second)."},
    {"English": "contamination", "한국어": "데이터 오염", "Definition": "Benchmark items present in the training data."},
]
