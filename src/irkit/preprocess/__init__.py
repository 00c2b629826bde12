"""Traffic challenge preprocessing: attribute parsing, zero-shot augmentation, training CSV."""

from irkit.preprocess.attributes import (  # noqa: F401
    VehicleAttributes,
    VehicleVocab,
    count_attributes,
    default_vocab,
    load_car_attribute,
    parse_vehicle_attr,
    split_labels,
    write_car_attribute,
)
from irkit.preprocess.augment import augment_labels, candidate_attributes  # noqa: F401
from irkit.preprocess.csvbuild import build_training_csv  # noqa: F401
