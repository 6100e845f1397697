"""The `meshtron` command line and scripts."""
