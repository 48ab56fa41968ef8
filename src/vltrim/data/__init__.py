"""Data: built-in procedural image-caption set, word tokenizer, and loaders for a user's own data."""
from .manifest import ImageCaptionManifest, ImageFolder, load_image, read_manifest
from .prompts import ClassPrompts
from .synthetic import SyntheticCaptions
from .tokenizer import WordTokenizer

__all__ = ["ClassPrompts", "ImageCaptionManifest", "ImageFolder", "SyntheticCaptions", "WordTokenizer", "load_image", "read_manifest"]
