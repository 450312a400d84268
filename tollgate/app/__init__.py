"""The app layer: command line, demo, local stack, git hook and DVC stage entry points. Nothing imports it."""
