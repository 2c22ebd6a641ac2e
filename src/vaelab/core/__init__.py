"""The bottom layer: what every other layer may import (errors, file writes, the CPU probe)."""
