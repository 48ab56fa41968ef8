"""Data: built-in procedural image-caption set, word tokenizer, loaders for a user's own data, and
`as_dataset`, which turns what users pass as train_data / eval_data into one checked form."""
from .inputs import as_dataset
from .manifest import ImageCaptionManifest, ImageFolder, load_image, read_manifest, verify_images
from .prompts import ClassPrompts
from .synthetic import SyntheticCaptions
from .tokenizer import WordTokenizer

__all__ = ["ClassPrompts", "ImageCaptionManifest", "ImageFolder", "SyntheticCaptions", "WordTokenizer", "as_dataset",
           "load_image", "read_manifest", "verify_images"]
