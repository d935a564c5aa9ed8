"""The file names of a model folder, defined once. A module of its own, free of torch, so the
model registry (`vild detect --list-models`) can name the files without importing the model;
`vild.training.checkpoint` writes and reads them."""

MODEL_CONFIG = "model_config.json"
MODEL_WEIGHTS = "model.safetensors"
VOCABULARY = "vocabulary.json"
TEXT_EMBEDDINGS = "text_embeddings.safetensors"
