"""The obvious way to write a GGUF with gguf-py: every tensor handed to `GGUFWriter.add_tensor`
in memory, then `write_tensors_to_file` (as convert_hf_to_gguf.py does, without its lazy
tensors).

    python benchmarks/naive_gguf.py PARENT BITS OUT.gguf

The tensors and metadata are matcli's own (the same plan, the same block bytes), so the
comparison is about holding the model versus streaming it, not about the arithmetic.
"""

import sys
from pathlib import Path

import numpy as np

from matcli.options import SliceOptions
from matcli.quant.slicing import plan_slice


def main() -> None:
    parent, bits, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    import gguf

    options = SliceOptions(parent=parent, bits=bits, format="gguf", output=out)
    plan = plan_slice(options)
    writer = gguf.GGUFWriter(out, plan.ctx.family.arch)
    plan._metadata(writer)
    for t in plan.tensors:
        data = np.concatenate([np.ascontiguousarray(c).view(np.uint8).ravel() for c in t.chunks()])
        writer.add_tensor(
            t.name, data.reshape(t.byte_shape), raw_dtype=gguf.GGMLQuantizationType[t.ggml_type]
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    plan.close()


if __name__ == "__main__":
    main()
