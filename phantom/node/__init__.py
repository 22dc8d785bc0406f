"""phantomd, by job: the one package that wires the control plane to a data path."""
