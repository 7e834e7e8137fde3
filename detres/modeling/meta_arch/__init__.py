from detres.modeling.meta_arch import faster_rcnn  # noqa: F401  (registers "FasterRCNN")
from detres.modeling.meta_arch import classifier  # noqa: F401  (registers "ImageClassifier")
from detres.modeling.meta_arch import rcnn_rescorer  # noqa: F401  (registers "RCNNRescorer")
from detres.modeling.meta_arch import localizer  # noqa: F401  (registers "PerClassRPNLocalizer")
