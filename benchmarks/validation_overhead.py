"""What validating a checkpoint costs, to compare with a command's wall time on the same folder.

    python benchmarks/validation_overhead.py FOLDER [--runs 50]

Medians over runs of each check matcli makes besides reading the data it transforms:
- open: ModelFolder (safetensors headers, index, links, auxiliary files);
- config and shapes: config.json's fields through the typed accessors and every transformed
  tensor's shape against them (arch/shapes.py): a parent's quantized Linears as slice checks
  them, a dense model's weights as extract, reorder and quantize check them;
- scale values (a parent only): the check slice makes on every weight_scale it reads
  (finite and positive), timed on scales already in memory: in a slice the read happens anyway,
  so this is what the check adds to the streaming pass.

Run it from two checkouts (before and after a change to the checks) on the same folder.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from matcli.arch import resolve
from matcli.arch.shapes import check_shapes
from matcli.checkpoint.nonfinite import check_scales, float_values
from matcli.checkpoint.reader import ModelFolder
from matcli.quant import ct_format


def median_ms(step: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    def opened():
        with ModelFolder(args.folder):
            pass

    print(f"{args.folder}, medians of {args.runs} runs:")
    print(f"  open (headers, index, links):  {median_ms(opened, args.runs):.3f} ms")
    with ModelFolder(args.folder) as folder:
        linears = ct_format.packed_linears(folder)
        arch = resolve(folder.config, list(folder.tensors))
        text = folder.text_config(arch.family.text_config)
        layers = arch.num_layers(text)
        if linears:  # as slice checks a parent: each quantized Linear's weight_shape
            shapes = {
                m + ".weight_shape": (q.out_features, q.in_features) for m, q in linears.items()
            }
            suffix = ".weight_shape"
        else:
            shapes, suffix = {n: t.shape for n, t in folder.tensors.items()}, ".weight"

        def shapes_checked():
            check_shapes(arch, folder.text_config(arch.family.text_config), layers, shapes, suffix)

        print(f"  config fields and shapes:      {median_ms(shapes_checked, args.runs):.3f} ms")
        if linears:
            scales = {}
            for module in linears:
                info = folder.tensors[module + ".weight_scale"]
                scales[info.name] = (folder.read_elements(info.name, 0, info.rows).copy(), info)

            def scales_checked():
                for name, (raw, info) in scales.items():
                    check_scales(float_values(raw, info.dtype, name), name)

            ms = median_ms(scales_checked, args.runs)
            print(f"  scale values ({len(scales)} weight_scale): {ms:.3f} ms")


if __name__ == "__main__":
    main()
