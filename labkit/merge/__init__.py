"""Model merging: linear, SLERP, task arithmetic, TIES, DARE — methods, geometry, experiment, export.

Heavy parts (training, evaluation) live in :mod:`labkit.merge.experiment` and are imported lazily.
"""

from labkit.merge.adapters import (
    adapter_delta_error,
    combine_adapters,
    full_state_dict,
    lora_deltas,
    merge_adapters_into_weights,
)
from labkit.merge.export import mergekit_config, mergekit_yaml
from labkit.merge.geometry import (
    LayerGeometry,
    PlanePicture,
    angle,
    cosine,
    gram_matrices,
    layer_geometry,
    merged_layer_norms,
    plane_basis,
    plane_picture,
    project,
    task_gram,
)
from labkit.merge.methods import (
    CONVENTIONS,
    METHODS,
    MergeError,
    dare,
    drop_random,
    elect_sign,
    layer_schedule,
    lerp,
    linear,
    merge,
    parse_schedule,
    slerp,
    slerp_coefficients,
    task_arithmetic,
    task_vector,
    ties,
    trim_magnitude,
)
from labkit.merge.path import Curve, MergePath, build_path, distance_evaluator, synthetic_state_dicts

__all__ = [
    "CONVENTIONS", "METHODS", "Curve", "LayerGeometry", "MergeError", "MergePath", "PlanePicture",
    "adapter_delta_error", "angle", "build_path", "combine_adapters", "cosine", "dare",
    "distance_evaluator", "drop_random", "elect_sign", "full_state_dict", "gram_matrices",
    "layer_geometry", "layer_schedule", "lerp", "linear", "lora_deltas", "merge",
    "merge_adapters_into_weights", "merged_layer_norms", "mergekit_config", "mergekit_yaml",
    "parse_schedule", "plane_basis", "plane_picture", "project", "slerp", "slerp_coefficients",
    "synthetic_state_dicts", "task_arithmetic", "task_gram", "task_vector", "ties", "trim_magnitude",
]
