"""The terms of lab 08 in English and Korean."""

TERMS = [
    {"English": "preference pair", "한국어": "선호 쌍", "Definition": "A prompt with a chosen and a rejected answer."},
    {"English": "DPO (direct preference optimization)", "한국어": "직접 선호 최적화",
     "Definition": "Trains the policy on pairs with −log σ(β·difference of log-ratios to a frozen reference)."},
    {"English": "reference model", "한국어": "참조 모델", "Definition": "The frozen SFT model the policy is kept close to."},
    {"English": "implicit reward", "한국어": "암묵적 보상", "Definition": "β·(log π(y|x) − log π_ref(y|x)) in DPO."},
    {"English": "reward model", "한국어": "보상 모델", "Definition": "An LM with a scalar head trained to score answers."},
    {"English": "Bradley–Terry loss", "한국어": "브래들리-테리 손실", "Definition": "−log σ(r_chosen − r_rejected)."},
    {"English": "best-of-n (rejection sampling)", "한국어": "best-of-n (거부 샘플링)",
     "Definition": "Sample n answers and keep the one a verifier prefers."},
    {"English": "PPO / GRPO", "한국어": "PPO / GRPO",
     "Definition": "Online RL from rewards; GRPO uses group-relative rewards instead of a value model."},
]
