"""The obvious alternative to `matcli slice`: load each shard whole, transform, save.

    python benchmarks/naive_slice.py PARENT BITS OUT

Uses the same slice transform as matcli (so the comparison is about I/O and memory, not
arithmetic): safetensors `load_file` of every shard, S(q, 8, r) on whole tensors,
`save_file`. Peak memory is a whole shard plus its transformed copy.
"""

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from matcli.quant import grid
from matcli.quant.packing import pack_int32, unpack_int32

PARENT_BITS = 8


def main() -> None:
    parent, bits, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for shard in sorted(parent.glob("*.safetensors")):
        tensors = load_file(shard)
        result = {}
        for name, t in tensors.items():
            if name.endswith(".weight_packed"):
                module = name.removesuffix(".weight_packed")
                in_features = int(tensors[module + ".weight_shape"][1])
                codes = grid.from_signed(unpack_int32(t, PARENT_BITS, in_features), PARENT_BITS)
                sliced = grid.slice_codes(codes, PARENT_BITS, bits)
                result[name] = pack_int32(grid.to_signed(sliced, bits), bits)
            elif name.endswith(".weight_scale"):
                result[name] = t * (1 << (PARENT_BITS - bits))
            else:
                result[name] = t
        save_file(result, out / shard.name, metadata={"format": "pt"})
        del tensors, result
    config = json.loads((parent / "config.json").read_text())
    for group in config["quantization_config"]["config_groups"].values():
        group["weights"]["num_bits"] = bits
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if (parent / "model.safetensors.index.json").exists():
        shutil.copy(parent / "model.safetensors.index.json", out)


if __name__ == "__main__":
    main()
