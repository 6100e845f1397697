"""The `meshtron` command line (cli + one *_command.py per command) and scripts (bench, baseline).

The top of the house: may import every other package; nothing imports tools/.
"""
