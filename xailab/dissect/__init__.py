"""Network dissection (Bau, Zhou, Khosla, Oliva & Torralba, CVPR 2017).

For every unit (channel) of a layer:

1. the threshold T_u is the top-``quantile`` level of its activations over every
   image and position of the dataset (0.995 quantile for ``quantile=0.005``);
2. each activation map is upsampled bilinearly (``align_corners=False``) to the
   segmentation size, and the unit's mask is ``upsampled > T_u``;
3. per concept c, IoU(u, c) = sum |M_u & L_c| / sum |M_u | L_c| over the dataset,
   where the activation total counts only images in which c's (primary) category
   is labelled, and a whole-image label covers every pixel.

A unit is a *detector* of its best concept when that IoU exceeds ``iou_cutoff``
(0.04 in the paper). Everything is vectorised in torch and streamed in batches:
the data is forwarded once, the layers' activations are kept in memory (or, beyond
a budget, in a temporary file), and the tally counts only the mask pixels of each
chunk of upsampled maps. Memory depends on the batch size, the number of units and
the quantile's top buffer, never on the number of images beyond that buffer.

- ``passes``: ``dissect`` itself; each layer's running sums live in one
  ``_LayerTally``, filled during the forward pass (thresholds, top images) and the
  tally (mask pixels per category and concept);
- ``result``: the ``Dissection`` it returns (IoU table, labels, NetDissect's tally);
- ``plots``: detectors per layer and each unit's top images under its mask.

    result = dissect(model, "features.block3", folder)
    result.iou          # FloatTensor[units, concepts]
    result.tally()      # NetDissect's tally.csv as a DataFrame
"""
from .passes import dissect, unit_masks
from .plots import plot_summary, show_top_images
from .result import Dissection

__all__ = ["Dissection", "dissect", "plot_summary", "show_top_images", "unit_masks"]
