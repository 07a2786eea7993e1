"""The paper's published figures (Leong et al., Semi-CNN), the targets of the reproduction.

``TABLE2`` is Table 2 as printed (millions of parameters, 0.1 M precision) and ``TABLE2_EXACT``
the same counts to the parameter, re-derived layer by layer in the project's reference
(``architecture.md``); counts include weights, biases and BatchNorm scale/bias, not running
statistics, at 16x224x224 with 101 classes. Semi-DenseNet totals are given for reading (a), the
default; reading (b) is in ``SEMI_DENSENET_B``.
"""

FAMILIES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169")

# family: (2D, 3D, semi pre-trained, semi total), millions, as printed.
TABLE2 = {
    "vgg16": (134.7, 179.1, 5.3, 82.2),
    "resnet18": (11.4, 33.3, 0.4, 31.7),
    "resnet34": (21.5, 63.6, 0.8, 60.5),
    "resnet50": (23.9, 46.4, 0.9, 45.8),
    "resnet101": (42.8, 85.5, 0.9, 84.8),
    "resnet152": (58.5, 117.6, 1.4, 115.6),
    "densenet121": (7.2, 11.4, 0.8, 10.4),
    "densenet169": (12.8, 18.8, 0.8, 17.9),
}

TABLE2_EXACT = {
    "vgg16": (134_700_261, 179_072_869, 5_275_456, 82_245_541),
    "resnet18": (11_369_445, 33_255_717, 387_648, 31_741_605),
    "resnet34": (21_477_605, 63_565_349, 757_056, 60_527_525),
    "resnet50": (23_856_101, 46_405_925, 884_800, 45_802_661),
    "resnet101": (42_848_229, 85_452_069, 884_800, 84_848_805),
    "resnet152": (58_491_877, 117_610_789, 1_444_928, 115_631_269),
    "densenet121": (7_198_501, 11_390_053, 762_816, 10_353_957),
    "densenet169": (12_793_765, 18_754_789, 762_816, 17_899_173),
}
SEMI_DENSENET_B = {"densenet121": 10_372_965, "densenet169": 17_918_181}

# Table 3: UCF-101 split 1 validation top-1 / top-5 (%) after 50 epochs: family -> (3D, semi).
TABLE3 = {
    "vgg16": ((36.53, 62.70), (54.27, 81.21)),
    "resnet18": ((47.11, 73.65), (64.92, 85.51)),
    "resnet34": ((48.19, 74.41), (66.53, 88.58)),
    "resnet50": ((37.67, 64.60), (50.67, 78.91)),
}


def model_names(family: str) -> tuple[str, str, str]:
    """Registry names of a family's (2D, 3D, semi) models."""
    if family == "vgg16":
        return "vgg16_2d", "c3d", "semi_vgg16"
    return f"{family}_2d", f"{family}_3d", f"semi_{family}"
