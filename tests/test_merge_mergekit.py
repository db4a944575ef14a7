"""labkit.merge against mergekit.

Two parts: (1) mergekit 0.1.5's results on small fixed tensors, recorded once in a throwaway venv
(``python tests/test_merge_mergekit.py`` there prints them again) — these always run; (2) a live
comparison, including a whole merge driven by labkit's exported YAML, that runs only when
mergekit is importable (it is not a labkit dependency; CI skips it cleanly).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from labkit.merge import methods as M
from labkit.merge.export import mergekit_config, mergekit_yaml

HAVE_MERGEKIT = importlib.util.find_spec("mergekit") is not None


def fixture_inputs():
    g = torch.Generator().manual_seed(1234)
    return [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(3)]


def labkit_results() -> dict[str, torch.Tensor]:
    """labkit's merges of the fixture inputs, named like the recorded mergekit results."""
    base, a, b = fixture_inputs()
    out = {
        "linear_0.3_0.7": M.linear([a, b], [0.3, 0.7]),
        "slerp_whole_0.3": M.slerp(a, b, 0.3),
        "task_arithmetic_0.7": M.task_arithmetic(base, [a, b], [1.0, 1.0], lam=0.7),
        "ties_1.4_0.6_d0.5": M.ties(base, [a, b], [1.4, 0.6], density=0.5, convention="mergekit"),
    }
    for variant in ("linear", "ties"):
        torch.manual_seed(3)  # mergekit draws DARE masks from torch's global generator
        out[f"dare_{variant}_1.4_0.6_d0.5_seed3"] = M.dare(
            base, [a, b], [1.4, 0.6], density=0.5, variant=variant, convention="mergekit", seed=None)
    return out


# mergekit 0.1.5 (registry.get(name)([TensorGroup.from_tensors(...)], parameters=...)) on fixture_inputs()
MERGEKIT_0_1_5 = {
    'linear_0.3_0.7': [0.0880714655, -0.3469011248, -0.6433220931, 0.3771654066, 0.4945662137, -0.3522989494, 0.5599646436, -0.5310254706, 0.1625273916, -0.4509834985, -1.1248053167, 1.956101528],
    'slerp_whole_0.3': [-0.0509676032, -1.1317415108, -0.4776341036, 0.8232566811, 0.1233292483, 0.1976837621, 0.3318762116, -1.2946774881, -0.0389223138, 0.3151841684, -1.1384847123, 1.6088842067],
    'task_arithmetic_0.7': [0.0076591197, -1.0560978371, -0.2914786242, 0.6444060262, 0.6350447339, -0.3095764125, 0.4636409897, -1.3871925435, 0.1877119061, -0.9728684785, -1.4383046217, 2.3132531579],
    'ties_1.4_0.6_d0.5': [0.0461304619, -1.3705889549, -0.1319204255, 0.216738235, 0.8184132253, -0.7648915321, 0.230966813, -1.0546339654, -0.2668605646, 0.3060089823, -0.8715514013, 1.2005403001],
    'dare_linear_1.4_0.6_d0.5_seed3': [-0.3711504922, -4.7928563398, 1.5611353031, 2.0093733942, 1.7142056298, 0.7988481535, 0.230966813, 0.6930773457, -0.2668605646, -0.8511334924, -2.0643241698, 2.3769537443],
    'dare_ties_1.4_0.6_d0.5_seed3': [-0.5095653341, -4.7928563398, 1.5611353031, 2.0635253301, 1.7142056298, 0.7988481535, 0.230966813, 0.6930773457, -0.2668605646, -0.8511334924, -2.0643241698, 2.3769537443],
}


@pytest.mark.parametrize("name", sorted(MERGEKIT_0_1_5))
def test_matches_recorded_mergekit(name):
    got = labkit_results()[name]
    # mergekit computes DARE in float32 even for float64 inputs
    atol = 1e-6 if name.startswith("dare") else 1e-8
    np.testing.assert_allclose(got.reshape(-1).numpy(), MERGEKIT_0_1_5[name], atol=atol)


def test_exported_yaml_is_mergekit_shaped():
    import yaml

    cfg = yaml.safe_load(mergekit_yaml("ties", "org/a", "org/b", base_model="org/base", t=[0.2, 0.8],
                                       density=0.4, lam=0.9))
    assert cfg["merge_method"] == "ties" and cfg["base_model"] == "org/base"
    assert cfg["models"][0]["parameters"]["density"] == 0.4
    assert cfg["models"][0]["parameters"]["weight"] == pytest.approx([1.6, 0.4])
    assert cfg["parameters"] == {"lambda": 0.9, "normalize": True}
    assert mergekit_config("slerp", "a", "b", t=0.3)["parameters"] == {"t": 0.3}
    with pytest.raises(ValueError, match="base_model"):
        mergekit_config("dare_ties", "a", "b")


# ----------------------------------------------------------------- live (mergekit installed)
needs_mergekit = pytest.mark.skipif(not HAVE_MERGEKIT, reason="mergekit not installed (optional)")


def _group(tensors, base_index=None):
    from mergekit.merge_methods.base import TensorGroup

    ids = ["base", "a", "b"][-len(tensors):] if base_index == 0 or len(tensors) == 3 else ["a", "b"]
    return [TensorGroup.from_tensors(list(tensors), ids=ids, base_index=base_index)]


@needs_mergekit
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_live_tensor_methods(seed):
    from mergekit.merge_methods import registry

    g = torch.Generator().manual_seed(seed)
    base, a, b = (torch.randn(7, 9, generator=g, dtype=torch.float64) for _ in range(3))
    w = {"a": 1.3, "b": 0.5}
    d = {"a": 0.4, "b": 0.7}
    for t in (0.0, 0.3, 0.5, 1.0):
        mk = registry.get("slerp")(_group([a, b], base_index=0), parameters={"t": t})[0]
        assert torch.allclose(mk, M.slerp(a, b, t), atol=1e-10)
        mk = registry.get("linear")(_group([a, b]), parameters={"weight": {"a": 1 - t, "b": t}})[0]
        assert torch.allclose(mk, M.lerp(a, b, t), atol=1e-10)
    mk = registry.get("task_arithmetic")(_group([base, a, b], 0), parameters={"weight": w, "lambda": 0.6})[0]
    assert torch.allclose(mk, M.task_arithmetic(base, [a, b], [1.3, 0.5], lam=0.6), atol=1e-10)
    mk = registry.get("ties")(_group([base, a, b], 0), parameters={"weight": w, "density": {"a": 0.4, "b": 0.4}})[0]
    assert torch.allclose(mk, M.ties(base, [a, b], [1.3, 0.5], density=0.4, convention="mergekit"), atol=1e-10)
    for name, variant in (("dare_linear", "linear"), ("dare_ties", "ties")):
        torch.manual_seed(seed + 10)
        mk = registry.get(name)(_group([base, a, b], 0), parameters={"weight": w, "density": {"a": 0.5, "b": 0.5}})[0]
        torch.manual_seed(seed + 10)
        ours = M.dare(base, [a, b], [1.3, 0.5], density=0.5, variant=variant, convention="mergekit", seed=None)
        assert torch.allclose(mk, ours, atol=1e-5)  # mergekit's DARE works in float32
    # parallel vectors and a zero vector
    mk = registry.get("slerp")(_group([a, 3 * a], 0), parameters={"t": 0.3})[0]
    assert torch.allclose(mk, M.slerp(a, 3 * a, 0.3), atol=1e-10)
    z = torch.zeros_like(a)
    mk = registry.get("slerp")(_group([z, b], 0), parameters={"t": 0.3})[0]
    assert torch.allclose(mk, M.slerp(z, b, 0.3), atol=1e-10)
    del d


def _tiny_llama(seed: int, path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path, safe_serialization=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@needs_mergekit
@pytest.mark.parametrize("method,kwargs", [
    ("linear", {"t": 0.3}),
    ("linear", {"t": [0.1, 0.9]}),
    ("slerp", {"t": 0.3}),
    ("slerp", {"t": [0.0, 0.5, 1.0]}),
    ("task_arithmetic", {"t": 0.5, "lam": 0.7}),
    ("ties", {"t": 0.3, "density": 0.5, "convention": "mergekit"}),
])
def test_live_yaml_export_reproduces_merge(tmp_path, method, kwargs):
    """A whole model merged by mergekit from labkit's YAML equals labkit's merge of the same models."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file

    sds = {name: _tiny_llama(i, tmp_path / name) for i, name in enumerate(["base", "a", "b"])}
    text = mergekit_yaml(method, str(tmp_path / "a"), str(tmp_path / "b"), base_model=str(tmp_path / "base"), **kwargs)
    config = MergeConfiguration.model_validate(yaml.safe_load(text))
    run_merge(config, str(tmp_path / "out"), MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
    merged = {}
    for f in sorted((tmp_path / "out").glob("*.safetensors")):
        merged.update(load_file(f))
    ours = M.merge(method, sds["base"], sds["a"], sds["b"], **kwargs)
    assert set(merged) == set(ours)
    for name, tensor in merged.items():
        assert torch.allclose(tensor.float(), ours[name].float(), atol=1e-5), name


if __name__ == "__main__":  # regenerate MERGEKIT_0_1_5 (run where mergekit is installed)
    from mergekit.merge_methods import registry

    base, a, b = fixture_inputs()
    rec = {
        "linear_0.3_0.7": registry.get("linear")(_group([a, b]), parameters={"weight": {"a": 0.3, "b": 0.7}})[0],
        "slerp_whole_0.3": registry.get("slerp")(_group([a, b], 0), parameters={"t": 0.3})[0],
        "task_arithmetic_0.7": registry.get("task_arithmetic")(
            _group([base, a, b], 0), parameters={"weight": {"a": 1.0, "b": 1.0}, "lambda": 0.7})[0],
        "ties_1.4_0.6_d0.5": registry.get("ties")(
            _group([base, a, b], 0), parameters={"weight": {"a": 1.4, "b": 0.6}, "density": {"a": 0.5, "b": 0.5}})[0],
    }
    for name in ("dare_linear", "dare_ties"):
        torch.manual_seed(3)
        rec[f"{name}_1.4_0.6_d0.5_seed3"] = registry.get(name)(
            _group([base, a, b], 0), parameters={"weight": {"a": 1.4, "b": 0.6}, "density": {"a": 0.5, "b": 0.5}})[0]
    print(json.dumps({k: [round(float(x), 10) for x in v.reshape(-1)] for k, v in rec.items()}, indent=1))
