"""Data: built-in procedural image-caption set, word tokenizer, loaders for a user's own data, and
`as_dataset`, which turns what users pass as train_data / eval_data into one checked form."""

from vltrim.data.inputs import as_dataset
from vltrim.data.manifest import (
    ImageCaptionManifest,
    ImageFolder,
    ModelImageProcessor,
    load_image,
    read_manifest,
    resize_crop,
    verify_images,
)
from vltrim.data.prompts import ClassPrompts
from vltrim.data.segmentation import SceneSegments, SegmentationFolder
from vltrim.data.synthetic import SyntheticCaptions
from vltrim.data.tokenizer import WordTokenizer

__all__ = [
    "ClassPrompts",
    "ImageCaptionManifest",
    "ImageFolder",
    "ModelImageProcessor",
    "SceneSegments",
    "SegmentationFolder",
    "SyntheticCaptions",
    "WordTokenizer",
    "as_dataset",
    "load_image",
    "read_manifest",
    "resize_crop",
    "verify_images",
]
