"""A tiny Llama trained here (cached) on Python's documentation: held-out perplexity and generation per format.

The API is :mod:`.evaluate`: ``run(Settings()) -> LMResult`` (plain data), ``render(result, console)`` (rich
tables), ``Unavailable`` (raised with a one-line message naming what to install when transformers or
``pydoc_data`` is missing). ``python -m examples.tiny_lm.run`` is the command line.
"""
