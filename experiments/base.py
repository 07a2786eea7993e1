"""The paper's recipe (section 4.1) for any model: ``--config=experiments/base.py:semi_resnet18``.

UCF-101 split 1, 16x224x224 clips, SGD lr 0.1 / momentum 0.9 / dampening 0.9 / weight decay 1e-4,
lr x0.1 after 10 epochs without a better validation loss, effective batch 256 by gradient
accumulation over two devices, 50 epochs.
"""

import ml_collections

# Mini-batch per step (both GPUs together) by model size, as in the paper: 8, or 4 or 2 for large models.
MINI_BATCH = {"resnet50": 4, "resnet101": 2, "resnet152": 2, "densenet169": 4}
EFFECTIVE_BATCH = 256
DEVICES = 2


def mini_batch(model_name: str) -> int:
    family = model_name.replace("semi_", "").replace("_3d", "").replace("_2d", "")
    return MINI_BATCH.get(family, 8)


def get_config(model_name: str = "semi_resnet18") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()
    config.model.name = model_name
    config.model.width = 1.0
    config.model.dtype = "float32"
    config.model.options = ml_collections.ConfigDict()  # e.g. head, reading, dropout_rate

    config.dataset = ml_collections.ConfigDict()
    # ucf101, hmdb51, kinetics, folder, list, "tfds:ucf101/ucf101_1_256" or synthetic_motion (README "Data";
    # each source's fields: semicnn_jax.data.pipeline.config_fields(name))
    config.dataset.name = "ucf101"
    config.dataset.data_dir = ""  # the dataset's folder (UCF-101: UCF-101/ and ucfTrainTestlist/; or the TFDS data_dir)
    config.dataset.split = 1  # ucf101, hmdb51: 1, 2 or 3
    config.dataset.val_fraction = 0.2  # folder with one <class>/ tree: the share of videos evaluated on
    config.dataset.train_list = ""  # list: 'relative/path LABEL' lines (or a path,label CSV)
    config.dataset.val_list = ""
    config.dataset.class_names = ""  # list: optional file of class names, one a line, in label order
    config.dataset.prepared_dir = ""  # the output of `python -m semicnn_jax.data.prepare` (faster to read)
    config.dataset.workers = -1  # loader processes per JAX process; -1: one per core, 0: in this process
    config.dataset.prefetch = 2  # batches buffered per worker
    config.dataset.skip_missing = False  # True: videos named in the lists but absent are skipped
    config.dataset.shuffle_buffer = 256  # TFDS only: videos in the seeded shuffle buffer
    config.dataset.max_unreadable_fraction = 0.05  # warn when a larger share of the videos cannot be read

    config.num_frames = 16
    config.crop_size = 224
    batch = mini_batch(model_name)
    config.per_device_batch_size = max(1, batch // DEVICES)
    config.batch_size = -1  # > 0: global mini-batch instead of per_device_batch_size
    config.accumulation_steps = EFFECTIVE_BATCH // batch

    config.learning_rate = 0.1
    config.momentum = 0.9
    config.dampening = 0.9
    config.weight_decay = 1e-4
    config.nesterov = False
    config.plateau_factor = 0.1
    config.plateau_patience = 10
    config.plateau_threshold = 1e-4
    config.num_epochs = 50

    config.init_from = ""  # a converted ImageNet file (weights/README.md), or a run's workdir (fine-tuning)
    config.freeze_pretrained = False  # freeze what init_from provided
    config.freeze_until = ""  # freeze every layer up to this stage (semi models: spatial, temporal, ...)
    config.seed = 0

    config.log_every_steps = 50
    config.checkpoint_every_epochs = 1
    config.keep_checkpoints = 3
    config.max_steps = -1  # > 0: stop after this many mini-batches (smoke tests)
    config.allow_new_geometry = False  # True: resume a workdir with another num_frames/crop_size/dataset
    return config
