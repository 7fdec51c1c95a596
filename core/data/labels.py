"""The two classes, in label-index order. PNEUMONIA (index 1) is the positive class everywhere."""

CLASSES = ("NORMAL", "PNEUMONIA")
POSITIVE = 1
CLASS_TO_INDEX = {name: i for i, name in enumerate(CLASSES)}
