"""Every config key detres knows, with its default. Sections are owned by the part that reads them.

Conventions: images are fed to models as float tensors in ``INPUT.FORMAT`` channel order with values
in [0, 255]; the model subtracts ``MODEL.PIXEL_MEAN`` and divides by ``MODEL.PIXEL_STD``.
Boxes are XYXY in absolute pixels.
"""
from detres.config.config import CfgNode as CN

_C = CN()
_C.VERSION = 1
# Random seed; a negative value draws one at start-up (the drawn seed is written to the output dir).
_C.SEED = -1
_C.OUTPUT_DIR = "./output"
# Use deterministic algorithms where available (exact resume checks use this on CPU).
_C.CUDNN_BENCHMARK = False

# ---------------------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.META_ARCHITECTURE = "ImageClassifier"
# "auto" picks cuda when available, else cpu.
_C.MODEL.DEVICE = "auto"
# Local path, http(s) URL, or a short scheme (see detres.modeling.weight_import).
_C.MODEL.WEIGHTS = ""
# Per-channel mean/std in INPUT.FORMAT order. MSRA/Caffe2 weights: BGR, std 1.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# Keep conv weights (hence activations) in channels-last memory order: same results, faster oneDNN
# (CPU) and tensor-core (GPU) convolutions for the detectors (tools/benchmark.py measures it).
_C.MODEL.CHANNELS_LAST = False
# Fold batch norm into the preceding convolution whenever it is a fixed affine map (frozen BN, BN in
# eval mode): same outputs within float rounding, two fewer passes over each conv output.
_C.MODEL.FOLD_NORM = True
# torch.compile the backbone and the RoI head's per-region network ("" off, or a mode: "default",
# "reduce-overhead", "max-autotune"); the first batches are slow while it compiles.
_C.MODEL.COMPILE = ""
# RoIAlign on CPU: "embedding_bag" (weighted sums of channels-last feature rows, only the bins the head
# reads: same values within float rounding, several times faster forwards and backwards) or
# "torchvision" (its kernel). GPUs and exports always use torchvision's.
_C.MODEL.CPU_ROI_ALIGN = "embedding_bag"
# C4 head: run the 1x1 convolutions that open res5 (conv1 and the projection shortcut of an "msra"
# bottleneck, norms folded: frozen BN, or BN in eval mode) once on the res4 map and pool their outputs, instead of running them on
# every pooled region; RoIAlign is linear, so the same values within float rounding. Used when pooling
# computes only the bins res5 reads (embedding_bag RoIAlign on CPU) and the map has fewer cells than
# the regions have bins.
_C.MODEL.PROJECT_BEFORE_POOLING = True

_C.MODEL.BACKBONE = CN()
# Registry name of the backbone builder: "resnet" (ImageNet family) or "cifar_resnet".
_C.MODEL.BACKBONE.NAME = "resnet"
# Freeze the first stages: 0 nothing, 1 stem, 2 stem+res2, ...
_C.MODEL.BACKBONE.FREEZE_AT = 0

_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
# "msra": stride 2 in the first 1x1 conv of a downsampling bottleneck (the paper, Caffe2 weights);
# "pytorch": stride in the 3x3 conv (torchvision weights).
_C.MODEL.RESNETS.STYLE = "msra"
# "BN", "FrozenBN", "GN", "SyncBN"
_C.MODEL.RESNETS.NORM = "BN"
_C.MODEL.RESNETS.GN_NUM_GROUPS = 32
# Subset of stem, res2, res3, res4, res5, linear.
_C.MODEL.RESNETS.OUT_FEATURES = ["res5"]
# Shortcut option of the paper: "A" zero-padded identity, "B" projection when shapes change,
# "C" projection everywhere.
_C.MODEL.RESNETS.SHORTCUT = "B"
# Plain counterpart: the same layers without shortcuts.
_C.MODEL.RESNETS.PLAIN = False
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# 0 means the depth's default: 64 for 18/34 (BasicBlock), 256 for 50+ (Bottleneck).
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 0
_C.MODEL.RESNETS.NUM_GROUPS = 1
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
_C.MODEL.RESNETS.RES5_DILATION = 1
_C.MODEL.RESNETS.ZERO_INIT_RESIDUAL = False

_C.MODEL.CIFAR_RESNETS = CN()
# 6n+2 layers: 20, 32, 44, 56, 110, 1202, ...
_C.MODEL.CIFAR_RESNETS.DEPTH = 20
_C.MODEL.CIFAR_RESNETS.SHORTCUT = "A"
_C.MODEL.CIFAR_RESNETS.PLAIN = False
_C.MODEL.CIFAR_RESNETS.WIDTHS = [16, 32, 64]
# Subset of stem, res2, res3, res4 (16/32/64 filters at strides 1/2/4), linear.
_C.MODEL.CIFAR_RESNETS.OUT_FEATURES = ["linear"]
# "BN", "FrozenBN", "GN", "SyncBN"
_C.MODEL.CIFAR_RESNETS.NORM = "BN"
# ResResNet ("residual of residual"): one more shortcut around each stage, from its input to its
# output, added before a ReLU (identity, or SHORTCUT's option where the stage changes shape).
_C.MODEL.CIFAR_RESNETS.STAGE_SHORTCUTS = False
# Stages (of res2, res3, res4) replaced by the parameter-free option-A mapping, their weights kept but
# not trained: set per phase by block-wise training (SOLVER.BLOCKWISE).
_C.MODEL.CIFAR_RESNETS.ABSENT_STAGES = []

_C.MODEL.CLASSIFIER = CN()
_C.MODEL.CLASSIFIER.NUM_CLASSES = 1000

# ---------------------------------------------------------------------------- detection
_C.MODEL.PROPOSAL_GENERATOR = CN()
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"

_C.MODEL.ANCHOR_GENERATOR = CN()
# One list per input feature map; absolute pixel sizes (sqrt of area) and height/width ratios.
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# Anchor centres at (offset * stride) of each cell; 0.0 is Detectron2's, 0.5 the cell centre.
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

_C.MODEL.RPN = CN()
_C.MODEL.RPN.IN_FEATURES = ["res4"]
_C.MODEL.RPN.HEAD_CHANNELS = 0  # 0: same as the input feature
_C.MODEL.RPN.BOUNDARY_THRESH = -1
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.ALLOW_LOW_QUALITY_MATCHES = True
# Anchors with more than this fraction of their area inside a crowd region ("crowd_boxes" of an
# input) are ignored (neither positive nor negative); 1.0 disables.
_C.MODEL.RPN.CROWD_OVERLAP_THRESH = 0.7
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"  # or "l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
_C.MODEL.RPN.MIN_SIZE = 0.0

_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True
# Like MODEL.RPN.CROWD_OVERLAP_THRESH, for the sampled proposals.
_C.MODEL.ROI_HEADS.CROWD_OVERLAP_THRESH = 0.7
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
_C.MODEL.ROI_HEADS.DETECTIONS_PER_IMAGE = 100
# Box refinement (paper, Appendix B), test time only: each proposal's top-class box is pooled again
# and predicted anew; NMS at NMS_THRESH on the union of both predictions, then box voting: each kept box
# becomes the score-weighted mean of the union's same-class boxes (above SCORE_THRESH_TEST) with IoU >=
# VOTING_IOU_THRESH.
_C.MODEL.ROI_HEADS.BOX_REFINEMENT = CN()
_C.MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED = False
_C.MODEL.ROI_HEADS.BOX_REFINEMENT.NMS_THRESH = 0.3
_C.MODEL.ROI_HEADS.BOX_REFINEMENT.VOTING_IOU_THRESH = 0.5

_C.MODEL.ROI_BOX_HEAD = CN()
# "ROIPool" (the paper), "ROIAlign", "ROIAlignV2" (aligned=True, half-pixel offset).
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
# Global context (paper, Appendix B): the whole image's res5 feature is concatenated with each region's
# (the predictor's input width doubles). Changes the weights' shapes: set it as the checkpoint was trained.
_C.MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT = False

# ---------------------------------------------------------------------------- localization: per-class RPN
# The ImageNet localizer of the paper (Appendix C, meta-architecture "PerClassRPNLocalizer"): the ResNet of
# MODEL.RESNETS (MODEL.WEIGHTS a detres classifier checkpoint; its linear layer is not used) and a per-class
# RPN for MODEL.CLASSIFIER.NUM_CLASSES classes: per anchor and class one logistic regression and 4 deltas.
_C.MODEL.PER_CLASS_RPN = CN()
# The one feature map it runs on: res5 (stride 32) is the classification network's last conv map, the one
# the paper fine-tunes; a 224 crop gives a 7 x 7 map.
_C.MODEL.PER_CLASS_RPN.IN_FEATURE = "res5"
# A 3x3 conv + ReLU before the sibling 1x1 cls / reg convs (HEAD_CHANNELS outputs, 0: the feature's). 512
# keeps the per-class reg layer (A * C * 4 = 36000 outputs for 1000 classes, 9 anchors) at 18M weights.
_C.MODEL.PER_CLASS_RPN.HEAD_CONV = True
_C.MODEL.PER_CLASS_RPN.HEAD_CHANNELS = 512
# Anchors (sqrt of area, in input pixels; height / width ratios) on the single map, centred in their cells
# (offset 0.5). For 224 crops: ImageNet objects span roughly a quarter of the crop's side to all of it (more
# before cropping), so 3 scales an octave apart, 64 / 128 / 256, x 3 ratios (a square box between two scales
# has IoU >= 0.5 with the nearer of the two when centred on it).
_C.MODEL.PER_CLASS_RPN.ANCHOR_SIZES = [64, 128, 256]
_C.MODEL.PER_CLASS_RPN.ANCHOR_ASPECT_RATIOS = [0.5, 1.0, 2.0]
_C.MODEL.PER_CLASS_RPN.ANCHOR_OFFSET = 0.5
# Anchor labels as in the RPN: IoU < 0.3 negative, >= 0.7 positive, plus each box's best anchors.
_C.MODEL.PER_CLASS_RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.PER_CLASS_RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.PER_CLASS_RPN.ALLOW_LOW_QUALITY_MATCHES = True
# The paper: 8 anchors sampled per image, positives:negatives 1:1 (negatives fill in when positives lack).
_C.MODEL.PER_CLASS_RPN.BATCH_SIZE_PER_IMAGE = 8
_C.MODEL.PER_CLASS_RPN.POSITIVE_FRACTION = 0.5
_C.MODEL.PER_CLASS_RPN.BBOX_REG_WEIGHTS = [1.0, 1.0, 1.0, 1.0]  # lists: equal tuples would be one object, a YAML alias in dumps
# Smooth L1 on the ground-truth class's deltas (Faster R-CNN's RPN: sigma 3, i.e. beta 1/9).
_C.MODEL.PER_CLASS_RPN.SMOOTH_L1_BETA = 0.1111
_C.MODEL.PER_CLASS_RPN.BBOX_REG_LOSS_WEIGHT = 1.0
# Test: per class the PRE_NMS_TOPK_TEST best anchors are decoded, NMS at NMS_THRESH, then at most
# POST_NMS_TOPK_TEST boxes per class: the R-CNN rescorer's 200 proposals (without it the best box is used).
_C.MODEL.PER_CLASS_RPN.PRE_NMS_TOPK_TEST = 1000
_C.MODEL.PER_CLASS_RPN.POST_NMS_TOPK_TEST = 200
_C.MODEL.PER_CLASS_RPN.NMS_THRESH = 0.7

# Models attached to the localizer at test time (loaded when it is built, not saved in its checkpoints):
# classifiers (config files and weights, one per classifier; several: an ensemble, softmax averaged) give
# the top-5 classes; without them only the ground-truth class is localized (gt_loc_error). A rescorer
# (meta-architecture "RCNNRescorer") rescores and refines the per-class RPN's proposals.
_C.MODEL.LOCALIZER = CN()
_C.MODEL.LOCALIZER.CLASSIFIER_CONFIGS = []
_C.MODEL.LOCALIZER.CLASSIFIER_WEIGHTS = []
_C.MODEL.LOCALIZER.RESCORER_CONFIG = ""
_C.MODEL.LOCALIZER.RESCORER_WEIGHTS = ""
# The score a rescored proposal is ranked by: "rescorer" (the paper: the R-CNN's class probability replaces
# the RPN's) or "product" (the R-CNN's probability times the per-class RPN's: both stages' evidence, for a
# rescorer too weak to rank the proposals alone, as the quickstart's).
_C.MODEL.LOCALIZER.RESCORED_SCORE = "rescorer"

# ---------------------------------------------------------------------------- localization: R-CNN rescorer
# The R-CNN stage of the paper's ImageNet localization (Appendix C, meta-architecture "RCNNRescorer"): each
# class-dependent proposal is cropped, warped to INPUT_SIZE x INPUT_SIZE and classified by a ResNet (the
# MODEL.RESNETS trunk, MODEL.WEIGHTS a classifier checkpoint) with per-class cls and box-regression fc layers
# for MODEL.CLASSIFIER.NUM_CLASSES classes (as the localizer).
_C.MODEL.RESCORER = CN()
_C.MODEL.RESCORER.INPUT_SIZE = 224
# R-CNN's context padding p, in pixels of the WARPED region: the box is grown about its centre so that it
# fills the central INPUT_SIZE - 2p pixels (0: the box alone). Outside the image: the mean colour.
_C.MODEL.RESCORER.CONTEXT_PAD = 0
# Bilinear samples per output pixel side when warping (roi_align); 0: ceil(box side / INPUT_SIZE), an area
# average when shrinking and the exact pixels at scale 1.
_C.MODEL.RESCORER.SAMPLING_RATIO = 0
# Training (RoI-centric): the frozen per-class RPN localizer (config file and weights, loaded when the
# rescorer is built) gives the PROPOSALS_PER_CLASS best boxes of the ground-truth class of each training
# image; the ground-truth boxes are added. Empty config: inputs must carry "proposals".
_C.MODEL.RESCORER.LOCALIZER_CONFIG = ""
_C.MODEL.RESCORER.LOCALIZER_WEIGHTS = ""
_C.MODEL.RESCORER.PROPOSALS_PER_CLASS = 200
# Regions with IoU >= IOU_THRESHOLD with a ground-truth box are the class, the others background.
_C.MODEL.RESCORER.IOU_THRESHOLD = 0.5
# Regions sampled per image; the paper's mini-batch is 256 regions: SOLVER.IMS_PER_BATCH x this.
_C.MODEL.RESCORER.BATCH_SIZE_PER_IMAGE = 64
_C.MODEL.RESCORER.POSITIVE_FRACTION = 0.25
_C.MODEL.RESCORER.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
# Fast R-CNN's smooth L1 (beta 1; 0 would be plain L1) on the ground-truth class's deltas of positives.
_C.MODEL.RESCORER.SMOOTH_L1_BETA = 1.0
# Test: regions run through the network this many at a time (bounds memory).
_C.MODEL.RESCORER.TEST_CHUNK = 256

# ---------------------------------------------------------------------------- input
_C.INPUT = CN()
# Channel order of the images the loaders produce and the model expects: "BGR" or "RGB".
_C.INPUT.FORMAT = "BGR"
# Detection: shortest-edge resize.
_C.INPUT.MIN_SIZE_TRAIN = (600,)
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # or "range"
_C.INPUT.MAX_SIZE_TRAIN = 1000
_C.INPUT.MIN_SIZE_TEST = 600
_C.INPUT.MAX_SIZE_TEST = 1000
_C.INPUT.RANDOM_FLIP = "horizontal"  # or "none"
# Detection training: an albumentations pipeline run before the exact resize and flip above, a list of
# "Name" or [Name, {argument: value}] (photometric or box-moving geometric transforms; boxes that leave
# the image are dropped). See detres/data/detection/albumentations_pipeline.py. Empty: none.
_C.INPUT.ALBUMENTATIONS = []
# Detection images larger than this (height * width of their annotation) are skipped in training
# (counted, one warning) and an error in testing: decoding one costs 3 bytes a pixel. 0: no limit.
_C.INPUT.MAX_IMAGE_PIXELS = 50_000_000
# Pad batched images so that height and width are divisible by this (0: no constraint).
_C.INPUT.SIZE_DIVISIBILITY = 0

# Classification transforms.
_C.INPUT.CLS = CN()
# "cifar" (pad + random crop + flip) or "imagenet" (scale augmentation, crop, flip, PCA lighting).
_C.INPUT.CLS.AUGMENTATION = "cifar"
_C.INPUT.CLS.CROP_SIZE = 32
_C.INPUT.CLS.PAD = 4
_C.INPUT.CLS.TRAIN_SHORT_RANGE = (256, 480)
_C.INPUT.CLS.TEST_SHORT_SIZE = 256
_C.INPUT.CLS.PCA_LIGHTING_STD = 0.1
# Per-pixel mean subtraction (CIFAR): the mean image is computed on the training set.
_C.INPUT.CLS.PER_PIXEL_MEAN = True

# Localization transforms (detres/data/localization/transforms.py; boxes follow every resize, crop, flip).
_C.INPUT.LOC = CN()
# Training input: "crop" (the classification recipe: random shorter side, CROP_SIZE crop, flip, lighting)
# or "image" (the whole image, random shorter side, longer side <= MAX_SIZE, flip: the R-CNN rescorer's).
_C.INPUT.LOC.TRAIN_MODE = "crop"
# Square crop side of "crop" training and of TEST.LOC_MODE "center".
_C.INPUT.LOC.CROP_SIZE = 224
# Training shorter side: a uniform random integer in [min, max].
_C.INPUT.LOC.TRAIN_SHORT_RANGE = [256, 480]  # a list: not the same object as CLS's (no YAML alias in dumps)
# Longer-side cap of "image" training and of "dense" testing.
_C.INPUT.LOC.MAX_SIZE = 1000
# Test shorter side ("center": before the centre crop; "dense": when TEST.LOC_DENSE_SIZES is empty).
_C.INPUT.LOC.TEST_SHORT_SIZE = 256
# AlexNet PCA colour augmentation std in training (0: none), as INPUT.CLS.PCA_LIGHTING_STD.
_C.INPUT.LOC.PCA_LIGHTING_STD = 0.1

# ---------------------------------------------------------------------------- data
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ("synthetic_cls_train",)
_C.DATASETS.TEST = ("synthetic_cls_val",)
# Root folder that relative dataset paths are resolved against ($DETRES_DATASETS overrides).
_C.DATASETS.ROOT = "datasets"
# The generated classification set (synthetic_cls_train / synthetic_cls_val): 10 classes of shapes
# and textures, deterministic for SEED, generated in memory on first use.
_C.DATASETS.SYNTHETIC = CN()
_C.DATASETS.SYNTHETIC.NUM_TRAIN = 5000
_C.DATASETS.SYNTHETIC.NUM_VAL = 1000
_C.DATASETS.SYNTHETIC.SEED = 0
_C.DATASETS.SYNTHETIC.IMAGE_SIZE = 32
# Custom COCO-format datasets: a list of [name, json_file, image_root].
_C.DATASETS.REGISTER = []
# The synthetic shapes detection dataset ("synthetic_det_train" / "synthetic_det_val"), generated on
# first use under <ROOT>/generated/ (see detres/data/detection/synthetic.py). Sizes in native pixels.
_C.DATASETS.SYNTHETIC_DET = CN()
_C.DATASETS.SYNTHETIC_DET.NUM_TRAIN = 1000
_C.DATASETS.SYNTHETIC_DET.NUM_VAL = 200
_C.DATASETS.SYNTHETIC_DET.SEED = 0
# Each image side is drawn uniformly in [min, max].
_C.DATASETS.SYNTHETIC_DET.IMAGE_SIZE = (176, 256)
_C.DATASETS.SYNTHETIC_DET.OBJECTS_PER_IMAGE = (1, 4)
# Object extent, drawn log-uniformly in [min, max] (and at most 0.9 x the image's shorter side).
_C.DATASETS.SYNTHETIC_DET.OBJECT_SIZE = (30, 180)
# The generated localization set ("synthetic_loc_{train,val}", as classification "synthetic_loc_cls_*"):
# NUM_CLASSES (<= 24) coloured shapes, one boxed object an image, written in the ILSVRC CLS-LOC CSV layout
# under <ROOT>/generated/ on first use (see detres/data/localization/synthetic.py).
_C.DATASETS.SYNTHETIC_LOC = CN()
_C.DATASETS.SYNTHETIC_LOC.NUM_TRAIN = 2000
_C.DATASETS.SYNTHETIC_LOC.NUM_VAL = 300
_C.DATASETS.SYNTHETIC_LOC.NUM_CLASSES = 8
# Each image side is drawn uniformly in [min, max].
_C.DATASETS.SYNTHETIC_LOC.IMAGE_SIZE = (96, 160)
_C.DATASETS.SYNTHETIC_LOC.SEED = 0
# ILSVRC CLS-LOC annotations (imagenet_loc_*, under <ROOT>/ilsvrc): "auto" (LOC_<split>_solution.csv when
# present, else the XML files), "csv" (Kaggle) or "xml" (official ILSVRC/Annotations/CLS-LOC).
_C.DATASETS.LOC_LAYOUT = "auto"
# PASCAL VOC (voc_2007_*, voc_2012_*, under <ROOT>/VOCdevkit). Objects marked "difficult" are always
# ignored by the VOC evaluation; the dataset records (what training sees) leave them out unless this is True.
_C.DATASETS.VOC = CN()
_C.DATASETS.VOC.KEEP_DIFFICULT = False

_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 2
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

# ---------------------------------------------------------------------------- solver
_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "SGD"
_C.SOLVER.BASE_LR = 0.1
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 1e-4
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.BIAS_LR_FACTOR = 1.0
# Total images per iteration over all processes.
_C.SOLVER.IMS_PER_BATCH = 128
_C.SOLVER.MAX_ITER = 64000
# "multistep": lr * GAMMA at each of STEPS; "plateau": lr * GAMMA when the validation error stops
# improving for PLATEAU_PATIENCE evaluations; "cosine".
_C.SOLVER.LR_SCHEDULER = "multistep"
_C.SOLVER.STEPS = (32000, 48000)
_C.SOLVER.GAMMA = 0.1
_C.SOLVER.PLATEAU_PATIENCE = 2
# Warm-up: "linear" / "constant" for WARMUP_ITERS iterations at WARMUP_FACTOR * BASE_LR, or
# "until_train_error": WARMUP_FACTOR * BASE_LR until the running training error drops below
# WARMUP_TRAIN_ERROR (the paper's 110-layer CIFAR recipe: 0.01 until error < 80%).
_C.SOLVER.WARMUP_METHOD = "linear"
_C.SOLVER.WARMUP_ITERS = 0
_C.SOLVER.WARMUP_FACTOR = 0.001
_C.SOLVER.WARMUP_TRAIN_ERROR = 0.8
_C.SOLVER.CHECKPOINT_PERIOD = 5000
_C.SOLVER.CLIP_GRADIENTS = 0.0
_C.SOLVER.AMP = CN()
_C.SOLVER.AMP.ENABLED = False
_C.SOLVER.AMP.DTYPE = "bfloat16"  # or "float16" (uses a grad scaler; GPU only). bfloat16 also on CPU
# Block-wise ("partial") training of a CIFAR ResNet (detres.engine.blockwise): one phase per stage.
# ORDER "top_down" starts with res2 (nearest the input) and adds res3 then res4; "bottom_up" starts
# with res4. Phase k < last trains PHASE_ITERS[k] iterations at the constant rate PHASE_LRS[k]; the
# last phase (all stages) follows the rest of SOLVER. A stage joins with its usual initialisation, the
# last norm of each of its residual branches scaled by LAMBDA. Weights carry over between phases.
_C.SOLVER.BLOCKWISE = CN()
_C.SOLVER.BLOCKWISE.ENABLED = False
_C.SOLVER.BLOCKWISE.ORDER = "bottom_up"
_C.SOLVER.BLOCKWISE.PHASE_ITERS = []
_C.SOLVER.BLOCKWISE.PHASE_LRS = []
_C.SOLVER.BLOCKWISE.LAMBDA = 1.0

# ---------------------------------------------------------------------------- test
_C.TEST = CN()
# Evaluate every EVAL_PERIOD iterations (0: only at the end).
_C.TEST.EVAL_PERIOD = 0
# Inference under torch.autocast (bfloat16 on CPU or GPU, float16 on GPU): faster where the processor has
# bf16 units; detections change within the precision of bf16 (tools/benchmark.py --options reports both).
_C.TEST.AMP = CN()
_C.TEST.AMP.ENABLED = False
_C.TEST.AMP.DTYPE = "bfloat16"
_C.TEST.IMS_PER_BATCH = 8
# Classification test: "center" (single crop), "ten_crop", "multi_scale" (fully convolutional,
# scores averaged over MULTI_SCALE_SIZES shorter sides).
_C.TEST.CLS_MODE = "center"
_C.TEST.MULTI_SCALE_SIZES = (224, 256, 384, 480, 640)
# Localization test input: "center" (shorter side INPUT.LOC.TEST_SHORT_SIZE, centre CROP_SIZE crop) or
# "dense" (the whole image, fully convolutional, shorter side TEST_SHORT_SIZE or each of LOC_DENSE_SIZES).
_C.TEST.LOC_MODE = "center"
# Shorter sides of multi-scale "dense" testing (an input's "image" is then a list); empty: TEST_SHORT_SIZE.
_C.TEST.LOC_DENSE_SIZES = []
# Detection test-time options (detres.modeling.test_time; paper, Appendix B). MULTI_SCALE (a group)
# is the detector's image pyramid, unrelated to the classification key MULTI_SCALE_SIZES above.
_C.TEST.MULTI_SCALE = CN()
_C.TEST.MULTI_SCALE.ENABLED = False
# Shorter sides of the pyramid; its longer sides are capped at MAX_SIZE (<= 0: no cap; 2000 lets the
# 1000-pixel level of a 2:1 image keep its shorter side, as in Fast R-CNN's multi-scale test).
_C.TEST.MULTI_SCALE.SIZES = (200, 400, 600, 800, 1000)
_C.TEST.MULTI_SCALE.MAX_SIZE = 2000
# Each region is pooled at the scale where its area is closest to TARGET_SIZE**2 and the next one up
# (next one down at the top), the two maxout-merged. RPN: proposals from every scale, not the test size only.
_C.TEST.MULTI_SCALE.TARGET_SIZE = 224
_C.TEST.MULTI_SCALE.RPN = False
# Also detect on the mirrored image; its detections are mapped back and merged by per-class NMS.
_C.TEST.FLIP = False
# [[config_file, weights], ...]: detectors ensembled with the evaluated model (proposal union, RoI-head
# predictions averaged).
_C.TEST.ENSEMBLE = []
# Detection: this many ground-truth vs detection pictures go to TensorBoard and, as JPEGs, to
# OUTPUT_DIR/inference/<dataset>/pictures at each evaluation.
_C.TEST.VIS_IMAGES = 0
# Evaluating a model on a dataset with another number of classes (or with checkpoint class layers of
# another number of classes) is a config error; True evaluates anyway, with a warning.
_C.TEST.ALLOW_CLASS_MISMATCH = False
# VOC evaluation reports AP at IoU 0.5 with both the VOC2007 devkit's "11point" metric and the VOC2010+
# "area" metric; this one is listed and printed first (the paper's VOC 2007 test numbers are 11point).
_C.TEST.VOC_METRIC = "11point"
# COCO evaluation API: "pycocotools" or "faster_coco_eval" (pip install faster-coco-eval; the same 12
# numbers and per-category AP, evaluated several times faster).
_C.TEST.COCO_EVAL_BACKEND = "pycocotools"
