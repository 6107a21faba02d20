"""mixvlp-ds: image-text pre-training of chest X-ray transformers from mixed data."""
__version__ = "0.1.0"
