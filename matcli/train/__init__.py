"""Making parents: the method registry and every method's code (streamed RTN, QAT,
OmniQuant), the fake-quantized model they train, and the export into a parent's plan.

`matcli.quant` holds what needs no model: the grid, packing, the checkpoint format, slicing.
"""
