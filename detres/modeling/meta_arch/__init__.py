from detres.modeling.meta_arch import faster_rcnn  # noqa: F401  (registers "FasterRCNN")
from detres.modeling.meta_arch import classifier  # noqa: F401  (registers "ImageClassifier")
