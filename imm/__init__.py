"""imm: the control plane for immutable infrastructure."""

__version__ = "0.1.0"
