"""Hugging Face interop: architecture tables, export to and import from Hugging Face directories.

export     Meshtron params -> a transformers directory or a safetensors file; the architecture tables.
importer   A transformers directory -> a Meshtron run directory (the same tables read backwards).
tokenizer  SentencePiece model -> Hugging Face tokenizer.json.
"""
