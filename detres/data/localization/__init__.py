"""ImageNet localization data (He et al. 2015, Appendix C): ILSVRC CLS-LOC, a generated set, transforms
and loaders.

Catalog records (one per image)::

    {"file_name": str, "image_id": str (file stem), "height": int, "width": int,
     "label": int (index into the metadata's thing_classes = sorted wnids),
     "annotations": [{"bbox": [x1, y1, x2, y2] (XYXY absolute pixels, exactly as in the files),
                      "category_id": int}, ...]}

Modules: :mod:`.formats` (LOC_synset_mapping.txt, LOC_*_solution.csv and XML files), :mod:`.ilsvrc`
(the two CLS-LOC layouts -> records), :mod:`.image_size` (sizes from image headers),
:mod:`.synthetic` (the generated set, written in the CSV layout), :mod:`.transforms` (geometry that
moves boxes with pixels), :mod:`.loader` (train / test model inputs), :mod:`.builtin` (named datasets).
"""
from detres.data.localization.ilsvrc import load_ilsvrc_loc
from detres.data.localization.loader import build_localization_test_loader, build_localization_train_loader
from detres.data.localization.synthetic import SyntheticLocSpec, ensure_synthetic_loc

__all__ = [
    "SyntheticLocSpec",
    "build_localization_test_loader",
    "build_localization_train_loader",
    "ensure_synthetic_loc",
    "load_ilsvrc_loc",
]
