"""The ``npufarm`` command and its tools: argument parsing, ``npufarm run``, status view."""
