"""The bench's one error type: missing or foreign export files, unusable logs or ports.

`cg-bench` prints it as one `cg-bench: error:` line; every bench module raises it.
"""


class BenchError(RuntimeError):
    """Missing or foreign export files, unusable logs or ports: one line for the user."""
