"""Adapters that put polyfocal's losses where they are chosen: inside the trainers people use.

Each submodule imports its framework, and needs it installed (``pip install 'polyfocal[transformers]'``);
importing it without names the extra to install.
"""
