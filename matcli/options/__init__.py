"""Options of every command (pydantic models) and the recipes that load into them."""

from matcli.options.base import Options, OutputOptions, WriteOptions, input_paths, parse_size
from matcli.options.commands import (
    MIX_N_MATCH_STRATEGIES,
    PAPER_LOSS_WEIGHTS,
    DemoOptions,
    EvalOptions,
    EvalRetrievalOptions,
    ExtractOptions,
    InspectOptions,
    NestOptions,
    QuantizeOptions,
    ReorderOptions,
    SliceOptions,
    TruncateOptions,
    parse_distill,
)
from matcli.options.recipe import build_options, load_options, read_recipe

__all__ = [
    "MIX_N_MATCH_STRATEGIES",
    "PAPER_LOSS_WEIGHTS",
    "DemoOptions",
    "EvalOptions",
    "EvalRetrievalOptions",
    "ExtractOptions",
    "InspectOptions",
    "NestOptions",
    "Options",
    "OutputOptions",
    "QuantizeOptions",
    "ReorderOptions",
    "SliceOptions",
    "TruncateOptions",
    "WriteOptions",
    "build_options",
    "input_paths",
    "load_options",
    "parse_distill",
    "parse_size",
    "read_recipe",
]
