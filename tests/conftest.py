"""Shared test configuration."""

# Import hypothesis (a pytest plugin) while the interpreter is fresh. Importing it
# late, as its terminal-summary hook otherwise does, makes pytest compile its modules
# after many event loops have run, which trips a CPython 3.11.7 bug ("AST constructor
# recursion depth mismatch") and crashes the run at the very end.
import hypothesis  # noqa: F401
import hypothesis.extra  # noqa: F401
