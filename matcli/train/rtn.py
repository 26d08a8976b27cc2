"""`matcli quantize --method rtn|weighted-rtn`: a c-bit parent streamed without a model.

Each chosen Linear weight is read in row chunks; per-channel and per-group MinMax
parameters only need the rows at hand, so memory stays at one chunk whatever the size.
`rtn` rounds each weight to the nearest code; `weighted-rtn` picks the code that minimises
the lambda-weighted error of all the slices the parent is meant for (MatGPTQ's multi-width
objective, without its data-driven error feedback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from matcli.checkpoint.nonfinite import check_finite
from matcli.checkpoint.plan import Plan, copy_tensor
from matcli.checkpoint.reader import ModelFolder
from matcli.checkpoint.writer import OutputTensor
from matcli.options import QuantizeOptions
from matcli.quant import ct_format, grid
from matcli.quant.ct_format import PACKED, SCALE, SHAPE, ZERO, WeightScheme
from matcli.quant.packing import packed_columns
from matcli.quant.parent import ParentInfo, info_from_options
from matcli.train.parent_plan import parent_plan, quant_targets

if TYPE_CHECKING:
    import numpy as np

CodeTable = tuple["np.ndarray", "np.ndarray"]  # grid.weighted_code_table: breakpoints, codes


class RtnLinear:
    """Produces the compressed-tensors tensors of one Linear from its float weight.

    The packed codes are produced first (tensor names sort `weight_packed` before
    `weight_scale` and `weight_zero_point`); the scale and zero point computed on the way are
    kept until written, then dropped, so a model's worth of scales is never held at once.
    """

    def __init__(
        self,
        folder: ModelFolder,
        module: str,
        scheme: WeightScheme,
        chunk_bytes: int,
        code_table: CodeTable | None = None,
    ):
        self.folder, self.module, self.scheme, self.chunk_bytes = (
            folder,
            module,
            scheme,
            chunk_bytes,
        )
        self.code_table = code_table  # weighted-rtn's best-code table; None: round to nearest
        self.weight = folder.tensors[module + ".weight"]
        self._scale: torch.Tensor | None = None
        self._zero: torch.Tensor | None = None

    def outputs(self) -> list[OutputTensor]:
        out_features, in_features = self.weight.shape
        groups = grid.groups_of(in_features, self.scheme.group_size)
        bits = self.scheme.bits
        label = f"quantize int{bits}"
        tensors = [
            OutputTensor(
                f"{self.module}.{PACKED}",
                "I32",
                (out_features, packed_columns(in_features, bits)),
                self._packed,
                label,
            ),
            OutputTensor(
                f"{self.module}.{SCALE}",
                self.weight.dtype,
                (out_features, groups),
                self._scale_chunks,
                label,
            ),
            OutputTensor(
                f"{self.module}.{SHAPE}",
                "I64",
                (2,),
                lambda: iter([torch.tensor(self.weight.shape)]),
                label,
            ),
        ]
        if not self.scheme.symmetric:
            zero_shape = (packed_columns(out_features, bits), groups)
            tensors.append(
                OutputTensor(f"{self.module}.{ZERO}", "I32", zero_shape, self._zero_chunks, label)
            )
        return tensors

    def _quantize_rows(
        self, start: int, stop: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = self.folder.read_rows(self.weight.name, start, stop)
        check_finite(w, self.weight.name, start)
        scale, zero = grid.minmax_params(
            w, self.scheme.bits, self.scheme.symmetric, self.scheme.group_size
        )
        if self.code_table is not None:
            return grid.weighted_codes(w, scale, zero, self.code_table), scale, zero
        return grid.quantize_codes(w, scale, zero, self.scheme.bits), scale, zero

    def _packed(self):
        scales, zeros = [], []
        for start, stop in self.folder.row_chunks(self.weight.name, self.chunk_bytes):
            codes, scale, zero = self._quantize_rows(start, stop)
            scales.append(scale)
            zeros.append(zero)
            yield ct_format.pack_codes(grid.to_signed(codes, self.scheme.bits), self.scheme.bits)
        self._scale, self._zero = torch.cat(scales), torch.cat(zeros)

    def _params(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        # The zero point is dropped last (after the scale), so it tells whether the codes'
        # pass has run; it reruns only if the tensors are written out of the usual order.
        if self._zero is None:
            for _ in self._packed():
                pass
        return self._scale, self._zero

    def _scale_chunks(self):
        scale, _ = self._params()
        if self.scheme.symmetric:
            self._scale = self._zero = None
        else:
            self._scale = None
        yield scale

    def _zero_chunks(self):
        _, zero = self._params()
        self._scale = self._zero = None
        yield ct_format.pack_zero_point(zero, self.scheme.bits)


def plan_rtn(name: str, options: QuantizeOptions) -> Plan:
    """Round to nearest: codes made for the parent's own width, the only one it records."""
    info = ParentInfo(
        parent_bits=options.bits,
        scheme=options.scheme,
        group_size=options.group_size,
        trained_bits=[options.bits],
        method=name,
        layers=options.layers,
    )
    return streamed_plan(options, info)


def plan_weighted_rtn(name: str, options: QuantizeOptions) -> Plan:
    """Codes that minimise the lambda-weighted error of every --train-bits slice."""
    table = grid.weighted_code_table(
        options.bits, options.train_bits, options.loss_weights, options.extra_precision
    )
    return streamed_plan(options, info_from_options(options, name), table)


def streamed_plan(
    options: QuantizeOptions, info: ParentInfo, code_table: CodeTable | None = None
) -> Plan:
    """The parent's plan with codes streamed from the source: round to nearest, or the best
    code of `code_table` (`grid.weighted_code_table`)."""
    targets = quant_targets(options)
    folder, scheme = targets.folder, targets.scheme
    quantized = {
        m + ".weight": RtnLinear(folder, m, scheme, options.chunk_size, code_table)
        for m in targets.modules
    }
    tensors = []
    for name in sorted(folder.tensors):
        if name in quantized:
            tensors += quantized[name].outputs()
        else:
            tensors.append(copy_tensor(folder, name))
    return parent_plan(targets, tensors, info, options)
