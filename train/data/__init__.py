"""Training text to batches: corpus sources and their TFDS builder, the tokenizer, packed windows.

corpus     Text sources (stdlib, local files or folders, tfds:NAME) as TFDS datasets.
tokenizer  SentencePiece (trained on the corpus) or Hugging Face tokenizer.json, one interface.
prepare    Source -> documents -> token cache -> fixed-length windows, this host's slice of each batch.
"""
