"""Measuring explanations, one module per question:

- ``localisation``: boxes from maps (the CAM paper's protocol), pointing game,
  relevance mass and rank against ground-truth masks;
- ``faithfulness``: deletion and insertion curves;
- ``robustness``: max-sensitivity;
- ``fragility``: a label-preserving perturbation within an L-infinity budget that moves
  the map of the gradient, SmoothGrad, IG or Grad-CAM off the object (Ghorbani et al.,
  Dombrowski et al.), and its random control;
- ``sanity``: model and data randomisation, map similarities, shortcut exposure;
- ``intervals``: bootstrap intervals and paired comparisons (A beats B, or a tie);
- ``table``: the comparison table of every method on every model.

Every name is available as ``xailab.evaluation.<name>``.
"""
from .faithfulness import _curve_auc, blurred, deletion, insertion  # noqa: F401
from .fragility import Attack, fragility_attack, map_shift, random_perturbation, top_k_intersection  # noqa: F401
from .intervals import Interval, bootstrap_interval, paired_difference, verdict  # noqa: F401
from .localisation import (Box, box_from_map, box_iou, largest_region, localisation,  # noqa: F401
                           localisation_accuracy, pointing_game, relevance_mass, relevance_rank)
from .robustness import max_sensitivity, uniform_perturbation  # noqa: F401
from .sanity import (SIMILARITIES, data_randomisation, hog_similarity, model_randomisation,  # noqa: F401
                     parameter_layers, randomise, shortcut_exposure, spearman, ssim)
from .table import (comparison_table, format_table, image_scores, per_image, score_images,  # noqa: F401
                    shortcut_scores, summary)
