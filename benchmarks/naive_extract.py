"""The MatFormer Lab notebook's way of extracting a Gemma 3n submodel, for comparison.

    python benchmarks/naive_extract.py MODEL OUT FFN_WIDTH SKIP[,SKIP...]

As in google-gemini/gemma-cookbook's [Gemma_3n]MatFormer_Lab.ipynb: every shard is opened
with safe_open and each tensor is read whole with get_tensor; FFN tensors are sliced, the
per-layer embedding and projection are re-indexed as whole tensors; results accumulate in a
dict that is written with save_file once it holds more than 4 GB, then files are renamed and
an index written. (The notebook's config edits are done here by matcli's rules instead, so
that the outputs can be compared tensor by tensor.)
"""

import json
import re
import shutil
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

SHARD_LIMIT = 4_000_000_000


def main() -> None:
    model, out, width = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    skip = {int(i) for i in sys.argv[4].split(",")}
    config = json.loads((model / "config.json").read_text())
    num_layers, per_layer = config["num_hidden_layers"], config["hidden_size_per_layer_input"]
    kept = [i for i in range(num_layers) if i not in skip]
    new_index = {old: new for new, old in enumerate(kept)}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pending, pending_bytes, written = {}, 0, []

    def flush():
        nonlocal pending, pending_bytes
        if pending:
            name = f"model-{len(written) + 1:05d}-of-XXXXX.safetensors"
            save_file(pending, out / name, metadata={"format": "pt"})
            written.append((name, list(pending)))
            pending, pending_bytes = {}, 0

    for shard in sorted(model.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                m = re.search(r"\.layers\.(\d+)\.", name)
                if m and int(m.group(1)) in skip:
                    continue
                tensor = f.get_tensor(name)
                if m:
                    name = name.replace(
                        f".layers.{m.group(1)}.", f".layers.{new_index[int(m.group(1))]}."
                    )
                    if "mlp.gate_proj" in name or "mlp.up_proj" in name:
                        tensor = tensor[:width, :].contiguous()
                    elif "mlp.down_proj" in name:
                        tensor = tensor[:, :width].contiguous()
                elif name.endswith("embed_tokens_per_layer.weight"):
                    rows = tensor.shape[0]
                    tensor = tensor.reshape(rows, num_layers, per_layer)[:, kept, :].reshape(
                        rows, -1
                    )
                elif name.endswith("per_layer_model_projection.weight"):
                    tensor = tensor.reshape(num_layers, per_layer, -1)[kept].reshape(
                        -1, tensor.shape[-1]
                    )
                pending[name] = tensor
                pending_bytes += tensor.numel() * tensor.element_size()
                if pending_bytes > SHARD_LIMIT:
                    flush()
    flush()
    weight_map = {}
    for i, (name, names) in enumerate(written):
        final = f"model-{i + 1:05d}-of-{len(written):05d}.safetensors"
        (out / name).rename(out / final)
        weight_map.update({n: final for n in names})
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    config["num_hidden_layers"] = len(kept)
    config["intermediate_size"] = [width] * len(kept)
    (out / "config.json").write_text(json.dumps(config, indent=2))


if __name__ == "__main__":
    main()
