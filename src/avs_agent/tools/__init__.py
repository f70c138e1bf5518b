"""Tools: one module per tool, typed inputs and outputs, local and remote backends."""
